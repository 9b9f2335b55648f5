//! The builder containers' entrypoint scripts: constants, so that no user value is ever
//! part of the text a shell parses. Pure data; `render` puts them in the Jobs.

/// The checks both builder scripts run before building (see [`BUILDER_SCRIPT`]): contextDir
/// and the Dockerfile exist and resolve inside the checkout. A literal, so that `concat!`
/// can put it in front of each strategy's own lines.
macro_rules! source_checks {
    () => {
        r#"set -eu
cd "$ARCHFORGE_WORKSPACE"
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
/// the count of the build argv, the build argv and the push argv, both from the plan (the
/// same lists the local executor runs). Every user value reaches it as a positional argument
/// or an environment variable expanded inside double quotes; the only text `eval` reads is
/// `"${1}" "${2}" ...`, made from numbers, so no user string is ever parsed as shell syntax.
///
/// The link git-sync made is read rather than followed because `fs.protected_symlinks`
/// can refuse to follow a link owned by another user (git-sync runs as its own UID).
///
/// The context directory and the Dockerfile are resolved before anything is built: a
/// symlink committed in the repository (`rootlink -> /`) must not turn the builder's own
/// filesystem, with the push credentials in it, into the build context. No other symlink of
/// the checkout may point outside it either: buildah follows a `RUN --mount=type=bind`
/// source through links (before 1.38.1, CVE-2024-11218). The checkout is mounted
/// read-only, so what is checked is what buildah reads; `realpath -m` (GNU coreutils, in
/// the default builder image) is needed, and without it the check fails closed.
pub const BUILDER_SCRIPT: &str = concat!(
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
/// filesystem, push credentials included), then
/// `buildctl-daemonless.sh` with every argument it was given (the plan's `buildctl build`
/// argv and `--metadata-file`), which starts a rootless buildkitd for this one build and
/// stops it after. It holds no BuildKit flag. The pushed manifest's digest is read from
/// buildctl's metadata file (`"containerimage.digest": "sha256:..."`, written by buildctl, not
/// by the user) and written to the termination log only when it is `sha256:` and 64
/// lowercase hex digits; anything else fails the build rather than report it.
pub const BUILDKIT_SCRIPT: &str = concat!(
    source_checks!(),
    r#"metadata=$ARCHFORGE_METADATA_FILE
rm -f -- "$metadata"
buildctl-daemonless.sh "$@"
digest=
if [ -f "$metadata" ]; then
  digest=$(sed -n 's/.*"containerimage\.digest"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$metadata" | head -n 1)
fi
hex=${digest#sha256:}
valid=yes
case "$digest" in sha256:*) ;; *) valid=no ;; esac
case "$hex" in *[!0-9a-f]*) valid=no ;; esac
[ "${#hex}" -eq 64 ] || valid=no
if [ "$valid" != yes ]; then
  printf 'archforge: buildctl pushed the image but its metadata file (%s) holds no valid containerimage.digest (sha256: and 64 lowercase hex digits); refusing to report one\n' "$metadata" >&2
  exit 1
fi
printf '%s' "$digest" > "$ARCHFORGE_TERMINATION_LOG"
"#
);
