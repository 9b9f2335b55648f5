"""Runs a command under a seccomp profile file (the OCI/Kubernetes JSON format), compiled
with the real libseccomp (Debian python3-seccomp; run it with /usr/bin/python3).

    /usr/bin/python3 scripts/seccomp-exec.py PROFILE.json COMMAND [ARG...]

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


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet", 1))
    fltr = seccomp.SyscallFilter(defaction=default)
    for rule in profile.get("syscalls", []):
        if rule.get("args"):
            raise SystemExit("seccomp-exec: argument filters are not supported")
        act = action(rule["action"], rule.get("errnoRet", 1))
        for name in rule["names"]:
            try:
                fltr.add_rule(act, name)
            except (ValueError, RuntimeError):
                raise SystemExit(f"seccomp-exec: unknown syscall {name!r}")
    fltr.load()
    os.execvp(sys.argv[2], sys.argv[2:])


main()
