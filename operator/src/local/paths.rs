//! `spec.source.contextDir` and `spec.source.dockerfile` checked in the checkout before any
//! build: a symlink must not lead the build context out of the repository.

use std::path::{Path, PathBuf};

use super::{LocalError, LocalOptions};
use crate::api::ImageBuild;

/// Resolves `spec.source.contextDir` and `spec.source.dockerfile` in the checkout, following
/// every symlink, and refuses what is missing or lies outside the checkout: a committed
/// `rootlink -> /` as contextDir would make the machine's root filesystem, push credentials
/// included, the build context. Also refuses credentials files inside the checkout.
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

/// Whether `path`'s deepest existing ancestor (links followed) lies outside `root`.
fn escapes(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .find_map(|a| a.canonicalize().ok())
        .is_some_and(|a| !a.starts_with(root))
        || std::fs::read_link(path).is_ok_and(|target| {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            let target = parent.unwrap_or_else(|| root.to_path_buf()).join(target);
            !normalize(&target).starts_with(root)
        })
}

/// `path` with `.` and `..` removed lexically, for a link target that does not exist.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
