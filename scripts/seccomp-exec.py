"""Runs a command under a seccomp profile file (the OCI/Kubernetes JSON format), compiled
with the real libseccomp (Debian python3-seccomp; run it with /usr/bin/python3).

    /usr/bin/python3 scripts/seccomp-exec.py PROFILE.json COMMAND [ARG...]
    /usr/bin/python3 scripts/seccomp-exec.py --compile PROFILE.json

With --compile it loads nothing: for each entry of the profile's archMap (the host
architecture and its sub-architectures, as CRI-O and Docker pick one), it compiles the
filter for exactly those architectures to BPF and prints `ARCH ok`, so an entry libseccomp
refuses (an unknown architecture, or one of another byte order) fails on any machine.

The tests use it to prove what the shipped builder profile allows (a user namespace and a
mount inside it, as rootless buildah needs) and refuses. It understands what that profile
uses: a default action of SCMP_ACT_ALLOW or SCMP_ACT_ERRNO and rules with SCMP_ACT_ERRNO or
SCMP_ACT_ALLOW by syscall name; anything else, or a syscall name libseccomp does not know,
is an error rather than silently skipped.
"""
import json
import os
import sys

import seccomp


def action(name, errno):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno)
    raise SystemExit(f"seccomp-exec: unsupported action {name}")


def arch(name):
    try:
        return getattr(seccomp.Arch, name.removeprefix("SCMP_ARCH_"))
    except AttributeError:
        raise SystemExit(f"seccomp-exec: unknown architecture {name}")


def build(profile, arches=None):
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet", 1))
    fltr = seccomp.SyscallFilter(defaction=default)
    if arches:
        # system_arch() is an unsigned token, the Arch constants are signed.
        native = seccomp.system_arch() % 2**32
        wanted = [arch(name) for name in arches]
        for token in wanted:
            if token % 2**32 != native:
                fltr.add_arch(token)
        if native not in [token % 2**32 for token in wanted]:
            fltr.remove_arch(seccomp.Arch.NATIVE)
    for rule in profile.get("syscalls", []):
        if rule.get("args"):
            raise SystemExit("seccomp-exec: argument filters are not supported")
        act = action(rule["action"], rule.get("errnoRet", 1))
        for name in rule["names"]:
            try:
                fltr.add_rule(act, name)
            except (ValueError, RuntimeError):
                raise SystemExit(f"seccomp-exec: unknown syscall {name!r}")
    return fltr


def compile_arch_map(profile):
    entries = profile.get("archMap") or []
    if not entries:
        raise SystemExit("seccomp-exec: the profile has no archMap")
    for entry in entries:
        arches = [entry["architecture"], *entry.get("subArchitectures", [])]
        try:
            build(profile, arches).export_bpf(open(os.devnull, "w"))
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"seccomp-exec: libseccomp refuses {' + '.join(arches)}: {e}")
        print(f"{entry['architecture']} ok")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--compile":
        with open(sys.argv[2]) as f:
            compile_arch_map(json.load(f))
        return
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    build(profile).load()
    os.execvp(sys.argv[2], sys.argv[2:])


main()
