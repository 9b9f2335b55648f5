#!/usr/bin/env bash
# Prepares a Debian machine for archforge's local builds, tests and demo:
#  - installs the real tools (registry, buildah, skopeo, qemu-user-static, git, ...) and
#    Helm's library from PyPI (helm-python-sdk) for the chart tests, and the Python
#    checkers of signed provenance (in-toto-attestation, pynacl, cryptography);
#  - downloads Debian's busybox-static for arm64, the base of the test and demo images,
#    into target/fixtures/arm64/busybox (nothing is pulled from a container registry);
#  - mounts binfmt_misc and registers qemu-aarch64, so arm64 builds run under emulation.
# Idempotent: does nothing that is already done. Needs root (apt-get, mount).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
packages=(
  docker-registry   # the real registry tests and the demo push to
  skopeo            # the independent client that checks what was pushed
  buildah           # the builder, the same one the Jobs run
  qemu-user-static  # runs arm64 RUN steps on amd64
  binfmt-support    # registers qemu with the kernel
  busybox-static    # the amd64 base image's only binary
  git
  openssh-server    # sshd on a loopback port for the git-over-SSH tests (never the system's service)
  python3           # its CGI server hosts git http-backend for the tests and the demo
  apache2-utils     # htpasswd, for the registry's basic-auth mode
  openssl           # certificates for the registry's TLS mode
  apparmor          # apparmor_parser compiles the builder's profile in the tests
  python3-seccomp   # libseccomp for scripts/seccomp-exec.py: the seccomp profile test
  runc              # runc 1.1 (libseccomp 2.5) loads the shipped seccomp profiles in tests
  libcap2-bin       # setcap: file capabilities on newuidmap/newgidmap, as builder images have
)
# kubectl renders the kustomize bases; Debian's own kubernetes-client only if none is here.
command -v kubectl >/dev/null || packages+=(kubernetes-client)
need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  need_update=1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
fixtures=target/fixtures/arm64
if ((${#missing[@]})) || ((need_update)) || [ ! -x "$fixtures/busybox" ]; then
  apt-get update -qq
fi
if ((${#missing[@]})); then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The package's own service would hold port 5000; tests and the demo start their own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
# Likewise sshd: the tests start their own, key-only, on loopback.
systemctl disable --now ssh >/dev/null 2>&1 || true

if [ ! -x "$fixtures/busybox" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq busybox-static:arm64 2>/dev/null)
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  mkdir -p "$fixtures"
  cp "$tmp/x/bin/busybox" "$fixtures/busybox"
  rm -rf "$tmp"
fi

# Helm's own library (render, lint) for the chart tests, without a helm binary.
if ! python3 -c 'import helm_python' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'helm-python-sdk==0.2.2'
fi

# Independent checkers of signed provenance (operator/tests/supply.rs, make demo): the in-toto
# project's statement/predicate parser, PyNaCl (cosign's encrypted key format) and
# cryptography (ECDSA P-256 signatures). Debian's skopeo 1.9 is built without sigstore
# verification, so scripts/supply-check.py also applies sigstoreSigned's rules to the
# signatures skopeo copies.
if ! python3 -c 'import in_toto_attestation, nacl, cryptography' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    'in-toto-attestation==0.9.3' 'pynacl==1.6.2' 'cryptography>=41'
fi

if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ "$(uname -m)" != aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "qemu-aarch64 is not registered with binfmt_misc; arm64 builds cannot run" >&2
    exit 1
  }
fi
