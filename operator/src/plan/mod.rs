//! From an ImageBuild to a build plan: what each platform builds, with which command line,
//! under which name. Pure: no client, no clock, no I/O. The Job renderer and the local
//! executor both consume this plan, so there is one place that decides the builder's argv.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::{Emulation, ImageBuild, ImageBuildSpec, MediaType, Strategy};
use crate::settings::BuilderSettings;
use crate::validation::{ValidSpec, parse_timeout};

mod buildkit;
pub mod isolated;
mod pod;
pub mod trust;

pub use buildkit::{buildkit_argv, buildkit_handoff_output, cache_ref};
pub use isolated::secret_copy_name;
pub use pod::{PodPlan, SecretNames};

/// Annotation whose new value starts a new run of an unchanged spec.
pub const REBUILD_ANNOTATION: &str = "archforge.dev/rebuild";
/// The tag buildah gives the image it has just built, before pushing it.
pub const LOCAL_IMAGE: &str = "localhost/archforge-build:latest";
/// What follows a repository in a push destination to push by digest only, without a tag:
/// containers/image 5.29 (buildah 1.33) and later understand `docker://host/repo@@unknown-digest@@`.
/// The default builder image (buildah 1.43) does; the builder script refuses an older one.
pub const UNKNOWN_DIGEST: &str = "@@unknown-digest@@";

/// A target platform: `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux-arm64`, `linux-arm-v7`: the form used in tags, names and labels.
    pub fn slug(&self) -> String {
        self.to_string().replace('/', "-")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid_part = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric());
        match parts.as_slice() {
            [os, arch] if [os, arch].iter().all(|p| valid_part(p)) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if [os, arch, variant].iter().all(|p| valid_part(p)) => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(format!(
                "{s:?} is not a platform of the form os/arch[/variant]"
            )),
        }
    }
}

/// What the build of one platform does, independent of where it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformPlan {
    pub platform: Platform,
    /// Name of this platform's Job (and the stem of its pod names).
    pub job_name: String,
    /// Where this platform's image is pushed: `<repo>@@unknown-digest@@` (by digest only,
    /// no tag) unless spec.output.platformTags, then the output tag plus `-os-arch[-variant]`.
    pub push_target: String,
    /// Which builder runs this platform; `build_argv` is that builder's.
    pub strategy: Strategy,
    /// Arguments to the strategy's builder, starting with `build` and run from the
    /// repository root: `buildah` (then [`PlatformPlan::handoff_argv`], a second call), or
    /// `buildctl-daemonless.sh`/`buildctl` (with [`PlatformPlan::handoff_argv`] appended).
    /// Neither ever pushes: the image goes to a directory, uploaded by another process.
    pub build_argv: Vec<String>,
    /// The manifest format of the pushed image.
    pub media_type: MediaType,
    /// The pull credentials file the builder reads (base images, the registry cache), when
    /// there is one. Never the push credentials: RUN steps can read what the builder reads.
    pub pull_auth_file: Option<String>,
    /// Whether the run may succeed without this platform.
    pub allow_failure: bool,
    /// Pod retries of this platform (its Job's backoffLimit).
    pub retries: i32,
    /// Deadline of this platform's build (its Job's activeDeadlineSeconds).
    pub timeout: Duration,
}

/// Node label saying that a node runs foreign binaries of `<arch>` under QEMU (its value is
/// "true"): `emulation.archforge.dev/arm64`. Set by the binfmt DaemonSet's instructions or by
/// hand; emulated builds are scheduled only on nodes that carry it.
pub const EMULATION_LABEL_PREFIX: &str = "emulation.archforge.dev/";

/// The node label that marks nodes able to emulate `architecture`.
pub fn emulation_label(architecture: &str) -> String {
    format!("{EMULATION_LABEL_PREFIX}{architecture}")
}

/// Where one platform's builder runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On a node of the platform's own architecture.
    Native,
    /// Under QEMU on a node of architecture `host` that is labelled as able to emulate it.
    Emulated { host: String },
}

impl PlatformPlan {
    /// The arguments that write the built image to the directory `dest` instead of pushing
    /// it, with no credentials: buildah's `push` to `dir:<dest>` (a second buildah call), or
    /// BuildKit's `--output type=oci,tar=false,dest=<dest>` (appended to the build argv).
    /// The push container (or `build --local` itself) uploads it from there. The one place
    /// that decides how a platform's image leaves the builder.
    pub fn handoff_argv(&self, dest: &str) -> Vec<String> {
        match self.strategy {
            Strategy::Buildah => [
                "push",
                "--format",
                self.media_type.buildah_push_format(),
                "--",
                LOCAL_IMAGE,
                &format!("dir:{dest}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            Strategy::Buildkit => vec![
                "--output".to_string(),
                buildkit_handoff_output(dest, self.media_type),
            ],
        }
    }

    /// The arguments that make BuildKit's `buildctl build` write its result metadata (the
    /// image's digest under the top-level `containerimage.digest`) to `metadata_file`, which
    /// the local executor checks the handed-off image against. Appended to
    /// [`PlatformPlan::build_argv`]; empty for buildah.
    pub fn metadata_argv(&self, metadata_file: &str) -> Vec<String> {
        match self.strategy {
            Strategy::Buildah => Vec::new(),
            Strategy::Buildkit => vec!["--metadata-file".to_string(), metadata_file.to_string()],
        }
    }
}

/// Everything one run of an ImageBuild does, per platform.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildPlan {
    /// Prefix shared by the names of this run's Jobs.
    pub run_name: String,
    pub generation: i64,
    pub rebuild: Option<String>,
    /// Commit SHA (or, before it was resolved, the ref) every platform checks out.
    pub revision: String,
    pub media_type: MediaType,
    /// Whether platforms may be built under emulation, and after how long a wait.
    pub emulation: Emulation,
    pub emulation_after: Duration,
    pub platforms: Vec<PlatformPlan>,
    /// The Secrets the run's pods mount.
    pub secrets: SecretNames,
    /// Where the pods fetch the source from, and where they may run.
    pub pod: PodPlan,
    /// The build context, relative to the repository root (`.` for the root itself).
    pub context_dir: String,
    /// The Dockerfile, relative to the repository root.
    pub dockerfile: String,
}

/// Where the builder reads pull credentials from, if anywhere (never push credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFile<'a> {
    None,
    Path(&'a str),
}

/// Kubernetes object names are at most 63 characters where they become label values.
const MAX_NAME: usize = 63;

fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Whether `label` ends the way [`dns_label`]'s hashed forms do: `-` and 8 hex digits.
fn looks_hashed(label: &str) -> bool {
    label.len() > 9
        && label.as_bytes()[label.len() - 9] == b'-'
        && label[label.len() - 8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A DNS-1123 label of at most `max` characters derived from `input`, injective: an input
/// that is already such a label is kept as it is, and every other one (too long, characters
/// replaced) gets a hash of the whole input appended. A kept label never ends like a hashed
/// one (an input that does is hashed too), so `foo.bar` (hashed) and a literal
/// `foo-bar-<that hash>` never meet.
pub fn dns_label(input: &str, max: usize) -> String {
    dns_label_hashing(input, max, input)
}

/// [`dns_label`], with the hash (when one is needed) taken of `hash_of` instead of the
/// input: an object's UID, which nobody chooses, makes a second preimage of a victim's
/// hashed name useless, since the attacker's own UID goes into the attacker's hash.
pub fn dns_label_hashing(input: &str, max: usize, hash_of: &str) -> String {
    let mut clean: String = input
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if clean == input
        && clean.len() <= max
        && !clean.starts_with('-')
        && !clean.ends_with('-')
        && !looks_hashed(&clean)
    {
        return clean;
    }
    let hash = short_hash(hash_of);
    clean.truncate(max.saturating_sub(hash.len() + 1));
    let trimmed = clean.trim_matches('-');
    if trimmed.is_empty() {
        hash
    } else {
        format!("{trimmed}-{hash}")
    }
}

/// The prefix of every Job name of one run: `<name>-<generation>[-r<hash of rebuild>]`. A
/// name that must be shortened or changed is hashed by the ImageBuild's `uid` when known.
pub fn run_name(name: &str, uid: Option<&str>, generation: i64, rebuild: Option<&str>) -> String {
    let suffix = match rebuild {
        Some(token) => format!("-{generation}-r{}", &short_hash(token)[..6]),
        None => format!("-{generation}"),
    };
    // Leave room for the longest platform slug ("-linux-ppc64le", 14 characters).
    let budget = MAX_NAME - suffix.len() - 14;
    let hash_of = uid.map_or_else(|| name.to_string(), |uid| format!("uid:{uid}"));
    format!("{}{suffix}", dns_label_hashing(name, budget, &hash_of))
}

/// The Job name of one platform of a run; deterministic, so a restart finds it again.
pub fn job_name(run_name: &str, platform: &Platform) -> String {
    format!("{run_name}-{}", platform.slug())
}

/// The tag of one platform's image: the output tag with the platform slug appended.
pub fn platform_tag(image: &str, platform: &Platform) -> String {
    format!("{image}-{}", platform.slug())
}

/// The repository of an output image reference (`host/repo:tag` without `:tag`).
pub fn output_repository(image: &str) -> &str {
    let slash = image.rfind('/').unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    }
}

/// Where one platform's image is pushed: by digest only (`<repo>@@unknown-digest@@`, which
/// buildah 1.33+ pushes without creating a tag) unless the spec asks for platform tags.
pub fn push_target(output: &crate::api::Output, platform: &Platform) -> String {
    if output.platform_tags {
        platform_tag(&output.image, platform)
    } else {
        format!("{}{UNKNOWN_DIGEST}", output_repository(&output.image))
    }
}

/// A push target as people read it: `<repo> (by digest)` rather than the
/// `@@unknown-digest@@` placeholder only buildah understands.
pub fn shown_push_target(push_target: &str) -> String {
    match push_target.strip_suffix(UNKNOWN_DIGEST) {
        Some(repository) => format!("{repository} (by digest)"),
        None => push_target.to_string(),
    }
}

fn join_path(dir: &str, file: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// The build context, relative to the repository root (`.` for the root itself).
pub fn context_dir(spec: &ImageBuildSpec) -> String {
    let context = spec.source.context_dir.trim_end_matches('/');
    if context.is_empty() {
        ".".to_string()
    } else {
        context.to_string()
    }
}

/// The Dockerfile, relative to the repository root.
pub fn dockerfile_path(spec: &ImageBuildSpec) -> String {
    join_path(&context_dir(spec), &spec.source.dockerfile)
}

/// The `buildah` arguments that build one platform. The same vector is the Job's builder
/// argv and the local executor's; only the working directory (the checkout) differs.
/// User values are separate elements: nothing here is ever joined into a shell string.
pub fn build_argv(spec: &ImageBuildSpec, platform: &Platform, auth: AuthFile<'_>) -> Vec<String> {
    let context = context_dir(spec);
    let mut argv: Vec<String> = [
        "build",
        "--platform",
        &platform.to_string(),
        "--isolation",
        "chroot",
        "--format",
        spec.output.media_type.buildah_build_format(),
        "--layers",
        "--file",
        &dockerfile_path(spec),
        "--tag",
        LOCAL_IMAGE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let AuthFile::Path(path) = auth {
        argv.extend(["--authfile".to_string(), path.to_string()]);
    }
    for arg in &spec.build_args {
        argv.extend([
            "--build-arg".to_string(),
            format!("{}={}", arg.name, arg.value),
        ]);
    }
    if let Some(target) = spec.target.as_deref().filter(|t| !t.is_empty()) {
        argv.extend(["--target".to_string(), target.to_string()]);
    }
    if let Some(cache) = &spec.cache {
        argv.extend([
            "--cache-from".to_string(),
            cache.image.clone(),
            "--cache-to".to_string(),
            cache.image.clone(),
        ]);
    }
    // "--" ends the options, so a context path can never be read as one.
    argv.extend(["--".to_string(), context]);
    argv
}

/// The value of the rebuild annotation, which is part of a run's identity.
pub fn rebuild_token(build: &ImageBuild) -> Option<String> {
    build
        .metadata
        .annotations
        .as_ref()?
        .get(REBUILD_ANNOTATION)
        .cloned()
}

/// What identifies one run of an ImageBuild: its generation and its rebuild annotation. The
/// controller finds a run's status and Jobs by it, and the plan names the Jobs after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    pub generation: i64,
    pub rebuild: Option<String>,
}

impl RunId {
    /// The run `build` asks for now.
    pub fn of(build: &ImageBuild) -> Self {
        RunId {
            generation: build.metadata.generation.unwrap_or(1),
            rebuild: rebuild_token(build),
        }
    }

    /// Whether `status` describes this run.
    pub fn is_described_by(&self, status: &crate::api::ImageBuildStatus) -> bool {
        status.observed_generation == Some(self.generation) && status.rebuild == self.rebuild
    }

    /// The prefix of this run's Job names.
    pub fn name(&self, build: &ImageBuild) -> String {
        let name = build.metadata.name.as_deref().unwrap_or("imagebuild");
        let uid = build.metadata.uid.as_deref();
        run_name(name, uid, self.generation, self.rebuild.as_deref())
    }
}

/// The Job names of `build`'s current run, one per valid platform. They do not depend on
/// the commit, so the controller can find the run's Jobs before the commit is pinned.
pub fn current_job_names(build: &ImageBuild) -> Vec<String> {
    job_names(build, &RunId::of(build).name(build))
}

/// The Job names of the run named `run`, one per valid platform of `build`.
pub(crate) fn job_names(build: &ImageBuild, run: &str) -> Vec<String> {
    build
        .spec
        .platforms
        .iter()
        .filter_map(|p| p.parse::<Platform>().ok())
        .map(|p| job_name(run, &p))
        .collect()
}

/// Plans one run of a validated ImageBuild at `revision` (a resolved commit SHA, or the
/// spec's ref when no resolution happened, as in a dry run).
pub fn plan(
    valid: &ValidSpec<'_>,
    settings: &BuilderSettings,
    revision: &str,
    auth: AuthFile<'_>,
) -> BuildPlan {
    let build = valid.imagebuild();
    let spec = &build.spec;
    let run = RunId::of(build);
    let run_name = run.name(build);
    let strategy = spec.strategy.unwrap_or(settings.default_strategy);
    let platforms = spec
        .platforms
        .iter()
        .map(|p| {
            let platform: Platform = p.parse().expect("validated platforms parse");
            let own = spec.platform_settings.iter().find(|s| &s.platform == p);
            let timeout = own
                .and_then(|s| s.timeout.as_deref())
                .or(spec.timeout.as_deref())
                .and_then(parse_timeout)
                .unwrap_or(settings.default_timeout);
            let push_target = push_target(&spec.output, &platform);
            let build_argv = match strategy {
                Strategy::Buildah => build_argv(spec, &platform, auth),
                Strategy::Buildkit => buildkit_argv(spec, &platform),
            };
            PlatformPlan {
                allow_failure: own.and_then(|s| s.allow_failure).unwrap_or(false),
                retries: own
                    .and_then(|s| s.retries)
                    .or(spec.retries)
                    .unwrap_or(settings.default_retries),
                timeout,
                job_name: job_name(&run_name, &platform),
                push_target,
                strategy,
                build_argv,
                media_type: spec.output.media_type,
                pull_auth_file: match auth {
                    AuthFile::Path(path) => Some(path.to_string()),
                    AuthFile::None => None,
                },
                platform,
            }
        })
        .collect();
    BuildPlan {
        run_name,
        generation: run.generation,
        rebuild: run.rebuild,
        revision: revision.to_string(),
        media_type: spec.output.media_type,
        emulation: spec.emulation.unwrap_or(settings.default_emulation),
        emulation_after: spec
            .emulation_after
            .as_deref()
            .and_then(parse_timeout)
            .unwrap_or_default(),
        platforms,
        secrets: SecretNames::of(spec),
        pod: PodPlan::of(spec),
        context_dir: context_dir(spec),
        dockerfile: dockerfile_path(spec),
    }
}

#[cfg(test)]
mod tests;
