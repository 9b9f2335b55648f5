//! The builder containers' entrypoint scripts: constants, so that no user value is ever
//! part of the text a shell parses. Pure data; `render` puts them in the Jobs.
//!
//! Each script first checks that the image holds what the builder needs (the builder image
//! contract, README "Builder images") and stops with one line naming what is missing and
//! what to do, rather than let buildah warn, fall back and fail later at a `RUN` step. Then
//! it writes the registry trust files, checks the source, and builds.

/// What both scripts start with: strict mode, the `fail` helper that prints one
/// `archforge:` line and stops, and `has_range FILE`, whether FILE (/etc/subuid or
/// /etc/subgid) gives the running user (by UID or name) a subordinate range.
macro_rules! prelude {
    () => {
        r#"set -eu
uid=$(id -u)
fail() {
  printf 'archforge: %s\n' "$1" >&2
  exit 1
}
has_range() {
  [ -r "$1" ] || return 1
  name=$(id -un 2>/dev/null) || name=
  while IFS=: read -r owner rest || [ -n "$owner" ]; do
    if [ -n "$owner" ] && { [ "$owner" = "$uid" ] || [ "$owner" = "$name" ]; }; then
      return 0
    fi
  done < "$1"
  return 1
}
"#
    };
}

/// The buildah image contract, checked before anything else (see [`BUILDER_SCRIPT`]):
/// buildah 1.33 or newer (`@@unknown-digest@@` pushes, containers/image 5.29), GNU
/// `realpath -m` (the symlink check), fuse-overlayfs and a usable fuse device (the overlay
/// storage), and subordinate ID mapping. The mapping is checked by what buildah does: a
/// user namespace with more than one ID range. Only when it has one (buildah's silent
/// fallback, after which the first `RUN` fails with "error setting supplemental groups
/// list") are newuidmap/newgidmap and the subordinate ID files examined, to say which is
/// wrong: a missing helper, a setuid-root one (it cannot write uid_map with the SETUID and
/// SETGID capabilities alone), or no range for the builder's UID. The device and the ID
/// files are named by the Job's environment.
macro_rules! buildah_contract {
    () => {
        r#"if ! command -v buildah >/dev/null 2>&1; then
  fail "the builder image has no buildah on PATH; use a buildah image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0"
fi
version=$(buildah --version 2>/dev/null | sed -n '/^buildah version [0-9]/{s/^buildah version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p;q;}')
major=${version%%.*}
minor=${version#*.}
case "$major.$minor" in
  *[!0-9.]* | .* | *.) version= ;;
esac
if [ -z "$version" ] || [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 33 ]; }; then
  fail "the builder image's buildah is ${version:-of an unknown version}; archforge pushes by digest alone (@@unknown-digest@@), which needs buildah 1.33 or newer; use a newer image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0"
fi
if ! realpath -m -- /archforge/x/.. >/dev/null 2>&1; then
  fail "the builder image's realpath does not take -m (GNU coreutils), which the check of the repository's symlinks needs; use an image with GNU coreutils, such as quay.io/buildah/stable"
fi
if ! command -v fuse-overlayfs >/dev/null 2>&1; then
  fail "the builder image has no fuse-overlayfs, which rootless buildah's overlay storage needs; use an image that has it, such as quay.io/buildah/stable"
fi
fuse=$ARCHFORGE_FUSE_DEVICE
if [ ! -c "$fuse" ]; then
  fail "$fuse is not in the builder container; the node's fuse device plugin gives it for the extended resource the Job asks for (operator setting --fuse-resource, Helm value builder.fuseResource): install a fuse device plugin (config/fuse-device-plugin) or name the resource yours advertises"
fi
if [ ! -r "$fuse" ] || [ ! -w "$fuse" ]; then
  fail "$fuse is not readable and writable by UID $uid (the device keeps the node's mode); make it mode 0666 on the nodes, as udev does"
fi
for kind in uid gid; do
  if [ "$kind" = uid ]; then ids=$ARCHFORGE_SUBUID_FILE; else ids=$ARCHFORGE_SUBGID_FILE; fi
  helper=new${kind}map
  if ! map=$(buildah unshare cat "/proc/self/${kind}_map" 2>&1); then
    fail "buildah cannot create a user namespace ($(printf '%s\n' "$map" | tail -n 1)); when unshare(CLONE_NEWUSER) is not permitted, the node's seccomp profile refuses it: use the shipped profile (operator setting --seccomp-profile localhost/archforge/archforge-builder.json, Helm value builder.seccompProfile)"
  fi
  ranges=$(printf '%s\n' "$map" | grep -c '^[[:space:]]*[0-9]') || ranges=0
  if [ "$ranges" -lt 2 ]; then
    path=$(command -v "$helper" 2>/dev/null) || path=
    if [ -z "$path" ]; then
      fail "the builder image has no $helper, so buildah cannot map the subordinate IDs a RUN step needs; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep / cap_setgid=ep), such as quay.io/buildah/stable"
    elif [ -u "$path" ]; then
      fail "the builder image's $helper is setuid-root, which cannot map IDs with the capabilities a baseline pod has; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep), such as quay.io/buildah/stable"
    elif ! has_range "$ids"; then
      fail "the builder image's $ids gives UID $uid no subordinate range; run the builder as the image's build user (operator setting --builder-uid, Helm value builder.uid; 1000 in quay.io/buildah/stable) or add a line $uid:100000:65536 to $ids in the image"
    else
      fail "buildah mapped a single ${kind} instead of UID $uid's subordinate range (a RUN step would fail); check that $helper carries file capabilities (cap_set${kind}=ep) and that $ids gives UID $uid a range"
    fi
  fi
done
"#
    };
}

/// The rootless BuildKit image contract (see [`BUILDKIT_SCRIPT`]): the programs
/// `buildctl-daemonless.sh` starts, and what rootlesskit maps subordinate IDs with. Unlike
/// buildah, rootlesskit has no fallback to run, so this is checked by looking: the helpers
/// exist, are not setuid-root (which cannot write uid_map with the SETUID and SETGID
/// capabilities alone), and the user has a range in each subordinate ID file.
macro_rules! buildkit_contract {
    () => {
        r#"for tool in buildctl-daemonless.sh buildctl buildkitd rootlesskit; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    fail "the BuildKit image has no $tool on PATH; use a rootless BuildKit image (operator setting --buildkit-image, Helm value builder.buildkitImage) that has buildctl-daemonless.sh, buildctl, buildkitd and rootlesskit"
  fi
done
for kind in uid gid; do
  if [ "$kind" = uid ]; then ids=$ARCHFORGE_SUBUID_FILE; else ids=$ARCHFORGE_SUBGID_FILE; fi
  helper=new${kind}map
  path=$(command -v "$helper" 2>/dev/null) || path=
  if [ -z "$path" ]; then
    fail "the BuildKit image has no $helper, which rootlesskit needs to map subordinate IDs; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep / cap_setgid=ep)"
  elif [ -u "$path" ]; then
    fail "the BuildKit image's $helper is setuid-root, which cannot map IDs with the capabilities a baseline pod has; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep), e.g. one built FROM the rootless BuildKit image that removes the setuid bit and runs setcap (README, Builder images)"
  elif ! has_range "$ids"; then
    fail "the BuildKit image's $ids gives UID $uid no subordinate range; use a rootless BuildKit image whose user $uid has one (user:100000:65536 in moby/buildkit's rootless images)"
  fi
done
"#
    };
}

/// Writes the registry trust the operator was configured with (see `render::trust`) for
/// the builder to read, with `certs` set to the directory of per-host CA bundles: each
/// host's PEM from `ARCHFORGE_REGISTRY_CA_<i>` to `$certs/<host>/ca.crt`, for `i` below
/// `ARCHFORGE_REGISTRY_CA_COUNT`. The values are written with `printf '%s'`, never parsed;
/// the only text `eval` reads is two variable names made with a number. The operator
/// checked each host at start (no `/`, no leading `.`); the script refuses one anyway
/// rather than write outside `$certs`.
macro_rules! write_certificates {
    () => {
        r#"i=0
while [ "$i" -lt "${ARCHFORGE_REGISTRY_CA_COUNT:-0}" ]; do
  eval "host=\$ARCHFORGE_REGISTRY_CA_HOST_$i pem=\$ARCHFORGE_REGISTRY_CA_$i"
  case "$host" in
    ''|.*|*/*) fail "registry trust: refusing to write the CA of registry host $host" ;;
  esac
  mkdir -p -- "$certs/$host"
  printf '%s' "$pem" > "$certs/$host/ca.crt"
  i=$((i + 1))
done
"#
    };
}

/// The checks both builder scripts run before building (see [`BUILDER_SCRIPT`]): contextDir
/// and the Dockerfile exist and resolve inside the checkout. A literal, so that `concat!`
/// can put it in front of each strategy's own lines.
macro_rules! source_checks {
    () => {
        r#"cd "$ARCHFORGE_WORKSPACE"
cd "$(readlink source)"
checkout=$(pwd -P)
for field in contextDir dockerfile; do
  if [ "$field" = contextDir ]; then path=$ARCHFORGE_CONTEXT_DIR; else path=$ARCHFORGE_DOCKERFILE; fi
  if [ ! -e "$path" ]; then
    printf 'archforge: spec.source.%s: %s does not exist in the repository\n' "$field" "$path" >&2
    exit 1
  fi
  case "$(realpath "$path")/" in
    "$checkout"/*) ;;
    *) printf 'archforge: spec.source.%s: %s resolves outside the repository (through a symlink); refusing to build\n' "$field" "$path" >&2
       exit 1 ;;
  esac
done
"#
    };
}

/// The buildah script's refusal of any symlink of the checkout that points outside it (see
/// [`BUILDER_SCRIPT`]). BuildKit does not need it: buildctl sends a symlink of the context
/// as a symlink, and the daemon resolves it inside the context, never on the pod's own
/// filesystem. And the rootless BuildKit image (Alpine, BusyBox) is not known to carry GNU
/// `realpath -m`, without which the scan refuses every repository holding a link.
macro_rules! link_checks {
    () => {
        r#"escape=$(find . -path ./.git -prune -o -type l -exec sh -c '
  checkout=$1
  shift
  for link do
    case "$(realpath -m -- "$link")/" in
      "$checkout"/*) ;;
      *) printf "%s\n" "$link"; exit 0 ;;
    esac
  done' archforge-links "$checkout" {} + | head -n 1)
if [ -n "$escape" ]; then
  printf 'archforge: the repository holds a symlink that points outside it (%s); refusing to build, because a RUN --mount or ADD could read through it\n' "$escape" >&2
  exit 1
fi
"#
    };
}

/// The builder's entrypoint. It is a constant and holds no buildah flag: its arguments are
/// the count of the build argv, the build argv and the handoff argv (`buildah push` to
/// `dir:` in the handoff volume, with no credentials), both from the plan (the same lists
/// the local executor runs). Every user value reaches it as a positional argument
/// or an environment variable expanded inside double quotes; the only text `eval` reads is
/// `"${1}" "${2}" ...` and variable names, made from numbers, so no user string is ever
/// parsed as shell syntax. In order: the image contract, the registry trust files, the
/// source checks, the build and the handoff. The builder never pushes: it has no push
/// credentials (the pod's `push` container uploads the image after this one has exited).
///
/// The link git-sync made is read rather than followed because `fs.protected_symlinks`
/// can refuse to follow a link owned by another user (git-sync runs as its own UID).
///
/// The context directory and the Dockerfile are resolved before anything is built: a
/// symlink committed in the repository (`rootlink -> /`) must not turn the builder's own
/// filesystem, with the pull credentials in it, into the build context. No other symlink of
/// the checkout may point outside it either: buildah follows a `RUN --mount=type=bind`
/// source through links (before 1.38.1, CVE-2024-11218). The checkout is mounted
/// read-only, so what is checked is what buildah reads; `realpath -m` (GNU coreutils, in
/// the default builder image) is needed, and the contract check refuses an image without it.
pub const BUILDER_SCRIPT: &str = concat!(
    prelude!(),
    buildah_contract!(),
    // buildah reads a drop-in of $HOME/.config/containers/registries.conf.d after the
    // image's own registries.conf, and CAs from $HOME/.config/containers/certs.d/<host>/
    // (containers-registries.conf.d(5), containers-certs.d(5)): both are emptyDir mounts.
    r#"if [ -n "${ARCHFORGE_REGISTRIES_CONF:-}" ]; then
  printf '%s' "$ARCHFORGE_REGISTRIES_CONF" > "$HOME/.config/containers/registries.conf.d/50-archforge.conf"
fi
certs=$HOME/.config/containers/certs.d
"#,
    write_certificates!(),
    source_checks!(),
    link_checks!(),
    r#"build_argc=$1
shift
refs=
i=1
while [ "$i" -le "$build_argc" ]; do
  refs="$refs \"\${$i}\""
  i=$((i + 1))
done
eval "buildah $refs"
shift "$build_argc"
exec buildah "$@"
"#
);

/// The BuildKit builder's entrypoint: the same contextDir and Dockerfile checks as
/// [`BUILDER_SCRIPT`] (buildctl would follow a `rootlink -> /` context on the pod's own
/// filesystem, pull credentials included), then `buildctl-daemonless.sh` with every
/// argument it was given (the plan's `buildctl build` argv and the handoff `--output`, an
/// OCI layout in the handoff volume), which starts a rootless buildkitd for this one build
/// and stops it after. It holds no BuildKit flag and reports no digest: the pod's `push`
/// container computes it from what it uploads.
pub const BUILDKIT_SCRIPT: &str = concat!(
    prelude!(),
    buildkit_contract!(),
    // buildkitd reads the file `--config` names in BUILDKITD_FLAGS (the Job sets it when
    // there is registry trust to give); its `ca` entries name the files written here.
    r#"if [ -n "${ARCHFORGE_BUILDKITD_TOML:-}" ]; then
  printf '%s' "$ARCHFORGE_BUILDKITD_TOML" > "$ARCHFORGE_TRUST_DIR/buildkitd.toml"
fi
certs=${ARCHFORGE_TRUST_DIR:-}/certs.d
"#,
    write_certificates!(),
    source_checks!(),
    r#"exec buildctl-daemonless.sh "$@"
"#
);
