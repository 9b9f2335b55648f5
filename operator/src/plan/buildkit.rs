//! The BuildKit side of the plan: the `buildctl build` argv of one platform. Pure, like the
//! rest of the plan; the same vector is the Job's builder argv and the local executor's.

use super::{Platform, context_dir, dockerfile_path};
use crate::api::{CacheScope, ImageBuildSpec, MediaType};

/// The `--output` of `buildctl build` that writes the image to the directory `dest` as an
/// OCI image layout (`index.json`, `blobs/sha256/`) instead of pushing it: the builder has
/// no push credentials. `dest` is the builder's own path (the handoff volume, or a
/// directory of the local run), never a user value.
pub fn buildkit_handoff_output(dest: &str, media_type: MediaType) -> String {
    format!(
        "type=oci,tar=false,dest={dest},oci-mediatypes={}",
        oci_mediatypes(media_type)
    )
}

/// The registry cache ref of one platform: `<cache image>:<os>-<arch>[-<variant>]`. Each
/// platform has its own ref, because a ref written by several builders at once keeps only
/// the last writer's cache (docker/buildx#1044).
pub fn cache_ref(cache_image: &str, platform: &Platform) -> String {
    format!("{cache_image}:{}", platform.slug())
}

/// BuildKit's `oci-mediatypes` word for the manifest format.
fn oci_mediatypes(media_type: MediaType) -> &'static str {
    match media_type {
        MediaType::Oci => "true",
        MediaType::Docker => "false",
    }
}

/// The `buildctl build` arguments that build `platform`; where the image goes
/// ([`buildkit_handoff_output`]) is appended by `PlatformPlan::handoff_argv`.
/// Every user value is one whole element, bound to its key inside it (`build-arg:NAME=VALUE`:
/// buildctl splits an `--opt` at its first `=`, and NAME cannot hold one); nothing is ever
/// joined into a shell string. The comma-separated `--output` and cache values hold only
/// references whose patterns exclude `,` and `=`.
pub fn buildkit_argv(spec: &ImageBuildSpec, platform: &Platform) -> Vec<String> {
    let dockerfile = dockerfile_path(spec);
    let (dockerfile_dir, filename) = match dockerfile.rsplit_once('/') {
        Some((dir, file)) => (dir.to_string(), file.to_string()),
        None => (".".to_string(), dockerfile.clone()),
    };
    let mut argv: Vec<String> = vec![
        "build".into(),
        "--frontend".into(),
        "dockerfile.v0".into(),
        "--local".into(),
        format!("context={}", context_dir(spec)),
        "--local".into(),
        format!("dockerfile={dockerfile_dir}"),
        "--opt".into(),
        format!("filename={filename}"),
        "--opt".into(),
        format!("platform={platform}"),
    ];
    for arg in &spec.build_args {
        argv.extend([
            "--opt".to_string(),
            format!("build-arg:{}={}", arg.name, arg.value),
        ]);
    }
    if let Some(target) = spec.target.as_deref().filter(|t| !t.is_empty()) {
        argv.extend(["--opt".to_string(), format!("target={target}")]);
    }
    if let Some(cache) = &spec.cache {
        let own = cache_ref(&cache.image, platform);
        let imports: Vec<String> = match cache.scope.unwrap_or_default() {
            CacheScope::PerPlatform => vec![own.clone()],
            CacheScope::Shared => {
                // Its own ref first: the cache most likely to hold this platform's layers.
                let mut refs = vec![own.clone()];
                refs.extend(
                    spec.platforms
                        .iter()
                        .filter_map(|p| p.parse::<Platform>().ok())
                        .filter(|p| p != platform)
                        .map(|p| cache_ref(&cache.image, &p)),
                );
                refs
            }
        };
        for import in imports {
            argv.extend([
                "--import-cache".to_string(),
                format!("type=registry,ref={import}"),
            ]);
        }
        argv.extend([
            "--export-cache".to_string(),
            format!("type=registry,ref={own},mode=max"),
        ]);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_written_to_the_handoff_never_pushed() {
        assert_eq!(
            buildkit_handoff_output("/var/run/archforge/handoff/image", MediaType::Oci),
            "type=oci,tar=false,dest=/var/run/archforge/handoff/image,oci-mediatypes=true"
        );
        assert!(!buildkit_handoff_output("/h", MediaType::Docker).contains("push"));
        assert!(buildkit_handoff_output("/h", MediaType::Docker).ends_with("oci-mediatypes=false"));
    }

    #[test]
    fn cache_refs_are_per_platform() {
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(
            cache_ref("r.example.com/team/app-cache", &v7),
            "r.example.com/team/app-cache:linux-arm-v7"
        );
    }
}
