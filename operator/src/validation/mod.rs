//! The Rust twin of the CRD's schema and CEL rules.
//!
//! Kubernetes 1.24 does not enforce CEL, and `archforge build --local` and `archforge render`
//! read files no API server has seen, so every rule of the schema exists here as well, with
//! a message that names the field. Tests check both layers reject the same inputs.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use crate::api::{
    BUILD_ARG_NAME_PATTERN, DNS_LABEL_PATTERN, DURATION_PATTERN, GIT_REF_PATTERN,
    GIT_URL_PASSWORD_MESSAGE, GIT_URL_PASSWORD_PATTERN, GIT_URL_PATTERN, GIT_URL_QUERY_MESSAGE,
    GIT_URL_QUERY_PATTERN, GIT_URL_USERINFO_MESSAGE, GIT_URL_USERINFO_PATTERN, IMAGE_REF_PATTERN,
    ImageBuildSpec, KNOWN_PLATFORMS, MAX_TIMEOUT_SECONDS, RELATIVE_PATH_PATTERN,
    REPOSITORY_PATTERN, TARGET_PATTERN,
};

/// One broken rule: the field it concerns and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// JSON path of the field, for example `spec.platforms[1]`.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every broken rule of a spec, in field order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<Invalid>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for InvalidSpec {}

/// An ImageBuild whose spec passed every rule: what [`crate::plan::plan`] takes, so a plan is
/// never made from an unchecked spec and the check runs once per reconcile.
#[derive(Clone, Copy, Debug)]
pub struct ValidSpec<'a> {
    build: &'a crate::api::ImageBuild,
}

impl<'a> ValidSpec<'a> {
    /// Checks `build`'s spec ([`ImageBuildSpec::validate`]).
    pub fn check(build: &'a crate::api::ImageBuild) -> Result<Self, InvalidSpec> {
        build.spec.validate()?;
        Ok(ValidSpec { build })
    }

    pub fn imagebuild(&self) -> &'a crate::api::ImageBuild {
        self.build
    }
}

fn compiled(pattern: &str) -> Regex {
    Regex::new(pattern).expect("archforge's own patterns compile")
}

static IMAGE_REF: LazyLock<Regex> = LazyLock::new(|| compiled(IMAGE_REF_PATTERN));
static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| compiled(REPOSITORY_PATTERN));
static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| compiled(DNS_LABEL_PATTERN));
static GIT_URL: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_PATTERN));
static GIT_REF: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_REF_PATTERN));
static RELATIVE_PATH: LazyLock<Regex> = LazyLock::new(|| compiled(RELATIVE_PATH_PATTERN));
static BUILD_ARG_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(BUILD_ARG_NAME_PATTERN));
static TARGET: LazyLock<Regex> = LazyLock::new(|| compiled(TARGET_PATTERN));
static DURATION: LazyLock<Regex> = LazyLock::new(|| compiled(DURATION_PATTERN));
static GIT_URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_PASSWORD_PATTERN));
static GIT_URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_USERINFO_PATTERN));
static GIT_URL_QUERY: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_QUERY_PATTERN));

/// Why [`GIT_URL_PATTERN`] refuses `url`, as specifically as the URL allows. Never quotes the
/// URL: it may hold a secret or an attacker's payload, and this text reaches status and Events.
fn git_url_problem(url: &str) -> &'static str {
    let (ssh, authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            (
                scheme == "ssh",
                &rest[..end],
                rest[end..].get(1..).unwrap_or(""),
            )
        }
        None => {
            let (authority, path) = url.split_once(':').unwrap_or((url, ""));
            (authority.contains('@'), authority, path)
        }
    };
    let (user, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    if user.starts_with('-') || host.starts_with('-') {
        "the user and host of a git URL must not start with '-' (git would pass them to ssh as options)"
    } else if !url.bytes().all(|b| b.is_ascii_graphic()) {
        "must contain only printable ASCII: no spaces, control characters or non-ASCII characters (percent-encode them in the path)"
    } else if ssh && authority.contains('%') {
        "the user and host of an ssh:// or user@host:path URL must not contain '%' (git decodes percent-escapes before passing them to ssh, so an escaped '-' would become an option)"
    } else if ssh && path.starts_with('-') {
        "the path of an ssh:// or user@host:path URL must not start with '-' (it could be read as an option)"
    } else {
        "is not a git URL (https://, http://, ssh://, git:// or user@host:path)"
    }
}

/// Parses a timeout in the `1h30m` form the schema allows.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.is_empty() || !DURATION.is_match(value) {
        return None;
    }
    humantime::parse_duration(value).ok()
}

#[derive(Default)]
struct Problems(Vec<Invalid>);

mod kubernetes;
mod quantity;

pub use kubernetes::{build_namespace, is_label_key, is_label_value, is_resource_name};
pub use quantity::parse_quantity;

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Invalid {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check_pattern(&mut self, field: &str, value: &str, re: &Regex, max: usize, what: &str) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if !re.is_match(value) {
            // Never the value itself: it may be a secret pasted into the wrong field, and
            // the controller copies these messages into status and Events.
            self.add(field, format!("is not {what}"));
        }
    }

    fn check_git_url(&mut self, field: &str, url: &str) {
        if url.chars().count() > 2048 {
            self.add(field, "must be at most 2048 characters");
            return;
        }
        for (re, message) in [
            (&*GIT_URL_PASSWORD, GIT_URL_PASSWORD_MESSAGE),
            (&*GIT_URL_USERINFO, GIT_URL_USERINFO_MESSAGE),
            (&*GIT_URL_QUERY, GIT_URL_QUERY_MESSAGE),
        ] {
            if re.is_match(url) {
                self.add(field, message);
            }
        }
        if !GIT_URL.is_match(url) {
            self.add(field, git_url_problem(url));
        }
    }

    fn check_timeout(&mut self, field: &str, timeout: &str) {
        match parse_timeout(timeout) {
            Some(d) if !d.is_zero() && d.as_secs() <= MAX_TIMEOUT_SECONDS => {}
            _ => self.add(
                field,
                format!(
                    "{timeout:?} is not a positive duration of at most 24h (like 30m or 1h30m)"
                ),
            ),
        }
    }

    fn check_retries(&mut self, field: &str, retries: i32) {
        if !(0..=10).contains(&retries) {
            self.add(field, "must be between 0 and 10");
        }
    }

    fn check_platform_settings(&mut self, spec: &ImageBuildSpec) {
        if spec.platform_settings.len() > 8 {
            self.add("spec.platformSettings", "at most 8 entries");
        }
        let optional = |p: &String| {
            spec.platform_settings
                .iter()
                .any(|s| &s.platform == p && s.allow_failure == Some(true))
        };
        if !spec.platforms.is_empty() && spec.platforms.iter().all(optional) {
            self.add(
                "spec.platformSettings",
                "at least one platform must not allowFailure: an index needs a platform that must succeed",
            );
        }
        for (i, settings) in spec.platform_settings.iter().enumerate() {
            let field = format!("spec.platformSettings[{i}]");
            let platform = &settings.platform;
            if !KNOWN_PLATFORMS.contains(&platform.as_str()) {
                self.add(
                    format!("{field}.platform"),
                    format!(
                        "unsupported platform; supported: {}",
                        KNOWN_PLATFORMS.join(", ")
                    ),
                );
            } else if !spec.platforms.contains(platform) {
                self.add(
                    format!("{field}.platform"),
                    format!("{platform} is not listed in spec.platforms"),
                );
            } else if spec.platform_settings[..i]
                .iter()
                .any(|s| &s.platform == platform)
            {
                self.add(
                    format!("{field}.platform"),
                    format!("{platform} has settings more than once"),
                );
            }
            if let Some(timeout) = &settings.timeout {
                self.check_timeout(&format!("{field}.timeout"), timeout);
            }
            if let Some(retries) = settings.retries {
                self.check_retries(&format!("{field}.retries"), retries);
            }
        }
    }

    fn check_relative_path(&mut self, field: &str, value: &str) {
        self.check_pattern(
            field,
            value,
            &RELATIVE_PATH,
            1024,
            "a relative path (letters, digits, '.', '_', '-', '/'; not starting with '/' or '-')",
        );
        if value.split('/').any(|segment| segment == "..") {
            self.add(field, "must stay inside the repository (no '..')");
        }
    }
}

impl ImageBuildSpec {
    /// Checks every rule the CRD schema and its CEL rules express.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut p = Problems::default();
        let git = &self.source.git;
        p.check_git_url("spec.source.git.url", &git.url);
        p.check_pattern(
            "spec.source.git.ref",
            &git.r#ref,
            &GIT_REF,
            255,
            "a branch, tag or commit SHA",
        );
        if git.depth.is_some_and(|d| d < 0) {
            p.add("spec.source.git.depth", "must be 0 (full history) or more");
        }
        if let Some(secret) = &git.credentials_secret {
            p.check_pattern(
                "spec.source.git.credentialsSecret",
                secret,
                &DNS_LABEL,
                63,
                "a valid Secret name (lowercase DNS label)",
            );
        }
        p.check_relative_path("spec.source.contextDir", &self.source.context_dir);
        p.check_relative_path("spec.source.dockerfile", &self.source.dockerfile);

        if self.platforms.is_empty() {
            p.add("spec.platforms", "at least one platform is required");
        }
        if self.platforms.len() > 8 {
            p.add("spec.platforms", "at most 8 platforms may be requested");
        }
        for (i, platform) in self.platforms.iter().enumerate() {
            if !KNOWN_PLATFORMS.contains(&platform.as_str()) {
                p.add(
                    format!("spec.platforms[{i}]"),
                    format!(
                        "unsupported platform {platform:?}; supported: {}",
                        KNOWN_PLATFORMS.join(", ")
                    ),
                );
            } else if self.platforms[..i].contains(platform) {
                p.add(
                    format!("spec.platforms[{i}]"),
                    format!("{platform} is listed more than once"),
                );
            }
        }

        p.check_pattern(
            "spec.output.image",
            &self.output.image,
            &IMAGE_REF,
            255,
            "an image reference with a registry host and a tag (registry.example.com/team/app:v1; tag at most 110 characters)",
        );
        for (field, secret) in [
            ("spec.output.pushSecret", &self.output.push_secret),
            ("spec.pullSecret", &self.pull_secret),
        ] {
            if let Some(secret) = secret {
                p.check_pattern(
                    field,
                    secret,
                    &DNS_LABEL,
                    63,
                    "a valid Secret name (lowercase DNS label)",
                );
            }
        }

        if let Some(secret) = self
            .output
            .signing
            .as_ref()
            .and_then(|s| s.key_secret.as_ref())
        {
            p.check_pattern(
                "spec.output.signing.keySecret",
                secret,
                &DNS_LABEL,
                63,
                "a valid Secret name (lowercase DNS label)",
            );
        }

        if self.build_args.len() > 64 {
            p.add("spec.buildArgs", "at most 64 build arguments");
        }
        for (i, arg) in self.build_args.iter().enumerate() {
            let field = format!("spec.buildArgs[{i}].name");
            p.check_pattern(&field, &arg.name, &BUILD_ARG_NAME, 128, "a valid ARG name");
            if self.build_args[..i].iter().any(|a| a.name == arg.name) {
                p.add(
                    field.clone(),
                    format!("{} is given more than once", arg.name),
                );
            }
            // BuildKit's Dockerfile frontend runs the image this names (even an empty one)
            // instead of itself: the spec's author, not the repository at the pinned commit
            // the provenance names, would pick what builds the image. Refused whatever the
            // strategy, since an unset one is the operator's default.
            if arg.name == "BUILDKIT_SYNTAX" {
                p.add(
                    field,
                    "BUILDKIT_SYNTAX selects BuildKit's frontend image, which would build the image instead of the Dockerfile the provenance names; put a `# syntax=` line in the Dockerfile instead",
                );
            }
            if arg.value.chars().count() > 4096 {
                p.add(
                    format!("spec.buildArgs[{i}].value"),
                    "must be at most 4096 characters",
                );
            }
        }
        if let Some(target) = &self.target {
            p.check_pattern("spec.target", target, &TARGET, 128, "a build stage name");
        }
        if let Some(cache) = &self.cache {
            p.check_pattern(
                "spec.cache.image",
                &cache.image,
                &REPOSITORY,
                255,
                "a repository with a registry host and no tag (registry.example.com/team/app-cache)",
            );
        }
        if let Some(resources) = &self.resources {
            p.check_resources(resources);
        }
        if let Some(timeout) = &self.timeout {
            p.check_timeout("spec.timeout", timeout);
        }
        if let Some(retries) = self.retries {
            p.check_retries("spec.retries", retries);
        }
        p.check_platform_settings(self);
        if let Some(after) = &self.emulation_after {
            match parse_timeout(after) {
                Some(d) if d.as_secs() <= MAX_TIMEOUT_SECONDS => {}
                _ => p.add(
                    "spec.emulationAfter",
                    "is not a duration of at most 24h (like 0s, 5m or 1h30m)",
                ),
            }
        }
        if let Some(selector) = &self.node_selector {
            p.check_node_selector(selector);
        }
        if let Some(tolerations) = &self.tolerations {
            p.check_tolerations(tolerations);
        }

        if p.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(p.0))
        }
    }
}

#[cfg(test)]
mod tests;
