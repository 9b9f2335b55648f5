//! The checkout checked before any build: `spec.source.contextDir` and `spec.source.dockerfile`
//! must lie in it, and no committed symlink may lead out of it.

use std::path::{Path, PathBuf};

use super::{LocalError, LocalOptions};
use crate::api::ImageBuild;

/// Resolves `spec.source.contextDir` and `spec.source.dockerfile` in the checkout, following
/// every symlink, and refuses what is missing or lies outside the checkout: a committed
/// `rootlink -> /` as contextDir would make the machine's root filesystem, push credentials
/// included, the build context. Also refuses credentials files inside the checkout, and
/// every symlink of the checkout that leads out of it (see [`check_symlinks`]).
pub(super) fn check_source_paths(
    build: &ImageBuild,
    commit: &str,
    checkout: &Path,
    options: &LocalOptions,
) -> Result<(), LocalError> {
    let source = &build.spec.source;
    let root = checkout
        .canonicalize()
        .map_err(|e| LocalError::tool("reading the checkout", e))?;
    let resolve = |field: &str, shown: &str, relative: &Path| -> Result<PathBuf, LocalError> {
        let outside = || {
            LocalError::SourcePath(format!(
                "spec.source.{field} {shown:?} resolves outside the repository (through a symlink)"
            ))
        };
        let path = root.join(relative);
        let resolved = match path.canonicalize() {
            Ok(p) => p,
            // A link pointing out of the checkout at nothing is still a link out of it.
            Err(_) if escapes(&root, &path) => return Err(outside()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::SourcePath(format!(
                    "spec.source.{field} {shown:?} does not exist in the repository at commit {commit}"
                )));
            }
            Err(e) => {
                return Err(LocalError::SourcePath(format!(
                    "spec.source.{field} {shown:?} cannot be read in the checkout: {e}"
                )));
            }
        };
        if !resolved.starts_with(&root) {
            return Err(outside());
        }
        Ok(resolved)
    };
    let context_dir = source.context_dir.trim_end_matches('/');
    let context_dir = if context_dir.is_empty() {
        "."
    } else {
        context_dir
    };
    let context = resolve("contextDir", &source.context_dir, Path::new(context_dir))?;
    if !context.is_dir() {
        return Err(LocalError::SourcePath(format!(
            "spec.source.contextDir {:?} is not a directory in the repository at commit {commit}",
            source.context_dir
        )));
    }
    // Resolved from the unresolved contextDir, exactly as buildah's --file is.
    let dockerfile = resolve(
        "dockerfile",
        &source.dockerfile,
        &Path::new(context_dir).join(&source.dockerfile),
    )?;
    if !dockerfile.is_file() {
        return Err(LocalError::SourcePath(format!(
            "spec.source.dockerfile {:?} (in contextDir {:?}) is not a file in the repository at commit {commit}",
            source.dockerfile, source.context_dir
        )));
    }
    check_symlinks(&root, commit)?;
    for file in options.docker_config.iter().chain(&options.ca_files) {
        if Path::new(file)
            .canonicalize()
            .is_ok_and(|f| f.starts_with(&root))
        {
            return Err(LocalError::SourcePath(format!(
                "{file} lies inside the checkout, where a build could copy it into the image; keep credentials and certificates elsewhere"
            )));
        }
    }
    Ok(())
}

/// Refuses the first symlink anywhere in the checkout (`.git` aside) whose target lies outside
/// it. buildah confines `COPY` to the context, but not a `RUN --mount=type=bind,source=link`
/// (buildah 1.28 mounts what the link points to on the host), so a committed
/// `leak -> /home/me/.docker/config.json` would hand the push credentials to the build.
/// Links are never followed while walking: what lies behind a link to a directory of the
/// checkout is walked under its real path, and a link out of it is refused, not entered.
fn check_symlinks(root: &Path, commit: &str) -> Result<(), LocalError> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            LocalError::tool(format!("reading {} of the checkout", dir.display()), e)
        })?;
        for entry in entries {
            let entry =
                entry.map_err(|e| LocalError::tool("reading a directory of the checkout", e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| LocalError::tool(format!("reading {}", path.display()), e))?;
            if kind.is_dir() {
                if dir != root || entry.file_name() != ".git" {
                    pending.push(path);
                }
            } else if kind.is_symlink() && link_escapes(root, &path) {
                let shown = path.strip_prefix(root).unwrap_or(&path);
                let target = std::fs::read_link(&path).unwrap_or_default();
                return Err(LocalError::SourcePath(format!(
                    "the repository's symlink {shown:?} (at commit {commit}) points outside it (to {target:?}); archforge refuses to build from a checkout with such links, because a RUN --mount or ADD could read through them. Make the link relative to a path inside the repository, or remove it"
                )));
            }
        }
    }
    Ok(())
}

/// Whether the symlink `link` (of the checkout `root`, itself canonical) leads outside `root`.
fn link_escapes(root: &Path, link: &Path) -> bool {
    !resolve(link).starts_with(root)
}

/// Whether `path` (under the canonical `root`), missing or not, resolves outside `root`.
fn escapes(root: &Path, path: &Path) -> bool {
    !resolve(path).starts_with(root)
}

/// Where the absolute `path` leads, following symlinks component by component as the kernel
/// does, and taking what does not exist (yet) as it is written: a dangling link is judged by
/// where its target would be, so one made to point out of the checkout at something created
/// later is caught as well. A symlink loop resolves to itself (it reads nothing).
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    let mut rest: std::collections::VecDeque<PathBuf> = path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    // Linux's own limit on the links one lookup follows.
    let mut hops = 0;
    while let Some(part) = rest.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => out = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::Normal(name)) => {
                let next = out.join(name);
                match std::fs::read_link(&next) {
                    Ok(_) if hops == 40 => return path.to_path_buf(),
                    Ok(target) => {
                        hops += 1;
                        for c in target.components().rev() {
                            rest.push_front(PathBuf::from(c.as_os_str()));
                        }
                    }
                    Err(_) => out = next,
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A checkout (canonical path) beside a directory `outside` holding a file `secret`.
    fn checkout() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("checkout");
        std::fs::create_dir_all(root.join("src/lib")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "x").unwrap();
        (dir, root)
    }

    fn refused(root: &Path) -> Option<String> {
        check_symlinks(root, "abc").err().map(|e| e.to_string())
    }

    #[test]
    fn links_that_stay_inside_are_accepted() {
        let (_dir, root) = checkout();
        symlink("src/lib", root.join("lib")).unwrap();
        symlink("../README", root.join("src/readme")).unwrap();
        symlink(root.join("src"), root.join("abs-inside")).unwrap();
        symlink("not-there-yet", root.join("dangling")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        // .git is git's, never part of a build context.
        symlink("/etc/passwd", root.join(".git/hooks-link")).unwrap();
        assert_eq!(refused(&root), None);
    }

    /// A link's target, made from the checkout's path.
    type Target = fn(&Path) -> PathBuf;

    #[test]
    fn every_kind_of_link_out_is_refused_by_its_path_in_the_repository() {
        let outside = |root: &Path| root.parent().unwrap().join("outside");
        let cases: [(&str, Target); 6] = [
            ("absolute", |r| r.parent().unwrap().join("outside/secret")),
            ("relative", |_| PathBuf::from("../../../outside/secret")),
            ("dangling", |_| PathBuf::from("/no/such/file")),
            ("dangling-relative", |_| PathBuf::from("../../../nothing")),
            // `up` is the checkout itself, so `up/..` is its parent, whatever `up/..` reads as.
            ("through-a-link", |_| PathBuf::from("up/../created-later")),
            ("dir", |r| r.parent().unwrap().join("outside")),
        ];
        for (name, target) in cases {
            let (_dir, root) = checkout();
            assert!(outside(&root).is_dir());
            symlink("../..", root.join("src/lib/up")).unwrap();
            let link = root.join("src/lib").join(name);
            symlink(target(&root), &link).unwrap();
            let message = refused(&root).unwrap_or_else(|| panic!("{name} was accepted"));
            assert!(
                message.starts_with(&format!(
                    "the repository's symlink \"src/lib/{name}\" (at commit abc) points outside it (to {:?})",
                    target(&root)
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn links_to_directories_are_not_walked_into() {
        let (dir, root) = checkout();
        // Walking through `top` would never end; walking `outside` would refuse `inner`.
        symlink("../..", root.join("src/lib/top")).unwrap();
        symlink("/etc/passwd", dir.path().join("outside/inner")).unwrap();
        assert_eq!(refused(&root), None);
        symlink("../../outside", root.join("src/out")).unwrap();
        assert!(refused(&root).unwrap().contains("symlink \"src/out\""));
    }
}
