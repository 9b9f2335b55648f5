//! The builder pod's `push` container and the handoff between it and the `builder`. Pure.
//!
//! The `builder` init container runs the Dockerfile with no push credentials and writes the
//! image to the `handoff` emptyDir; once it has exited (and every process a `RUN` step left
//! behind with it), the `push` container runs `archforge push-image` from the operator's own
//! image, in which no user code runs: it alone mounts the push Secret, uploads the image by
//! digest and writes the digest to its termination log, the only place the operator reads a
//! digest from.

use serde_json::{Value, json};

use crate::api::Strategy;
use crate::plan::{BuildPlan, PlatformPlan};
use crate::settings::{BUILDKIT_UID, BuilderSettings};

/// Name of the main container that uploads the built image; its termination message is
/// the platform's digest.
pub const PUSH_CONTAINER: &str = "push";
/// The emptyDir the builder writes the image to and the push container reads it from.
pub const HANDOFF_DIR: &str = "/var/run/archforge/handoff";
/// The image in the handoff: buildah's `dir:` directory or BuildKit's OCI layout.
pub const HANDOFF_IMAGE: &str = "/var/run/archforge/handoff/image";
/// Where the push Secret's docker config is mounted, in the push container only.
pub const PUSH_AUTH_DIR: &str = "/var/run/archforge/push";
pub const PUSH_AUTH_FILE: &str = "/var/run/archforge/push/config.json";
/// Where the pull Secret's docker config is mounted, in the builder only.
pub const PULL_AUTH_DIR: &str = "/var/run/archforge/pull";
pub const PULL_AUTH_FILE: &str = "/var/run/archforge/pull/config.json";
/// Where the operator image (Containerfile) holds the binary: named in full, so that the
/// command does not depend on the image's PATH.
pub const PUSHER_BINARY: &str = "/usr/local/bin/archforge";
/// The push container's termination message: the pushed digest.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// The UID the push container runs as: the builder's, whose files in the handoff (buildah
/// writes blobs mode 0600) it must read.
fn pusher_uid(platform: &PlatformPlan, settings: &BuilderSettings) -> i64 {
    match platform.strategy {
        Strategy::Buildah => settings.builder_uid,
        Strategy::Buildkit => BUILDKIT_UID,
    }
}

/// `archforge push-image`'s argv and environment: registry trust as the operator has it
/// (plain-HTTP hosts as flags, each CA's PEM in a variable the argv names).
fn push_command(
    plan: &BuildPlan,
    platform: &PlatformPlan,
    settings: &BuilderSettings,
) -> (Vec<String>, Vec<Value>) {
    let mut command: Vec<String> = [
        PUSHER_BINARY,
        "push-image",
        "--dir",
        HANDOFF_IMAGE,
        "--to",
        &platform.push_target,
        "--termination-log",
        TERMINATION_LOG,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if plan.secrets.push.is_some() {
        command.extend(["--authfile".to_string(), PUSH_AUTH_FILE.to_string()]);
    }
    let trust = &settings.registry_trust;
    for host in trust.insecure() {
        command.extend(["--insecure-registry".to_string(), host.as_str().to_string()]);
    }
    let mut env = Vec::new();
    for (i, (_, pem)) in trust.certificates().enumerate() {
        let name = format!("ARCHFORGE_REGISTRY_CA_{i}");
        command.extend(["--ca-env".to_string(), name.clone()]);
        env.push(json!({"name": name, "value": pem}));
    }
    (command, env)
}

/// The push container of one platform's pod.
pub(super) fn push_container(
    plan: &BuildPlan,
    platform: &PlatformPlan,
    settings: &BuilderSettings,
) -> Value {
    let (command, env) = push_command(plan, platform, settings);
    let mut mounts = vec![json!({"name": "handoff", "mountPath": HANDOFF_DIR, "readOnly": true})];
    if plan.secrets.push.is_some() {
        mounts.push(
            json!({"name": "push-credentials", "mountPath": PUSH_AUTH_DIR, "readOnly": true}),
        );
    }
    let (security, resources) = super::security::helper_confinement(pusher_uid(platform, settings));
    json!({
        "name": PUSH_CONTAINER,
        "image": settings.pusher_image,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": security,
        "resources": resources,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The volumes of the handoff and of the Secrets, each Secret mounted by one container.
pub(super) fn handoff_and_secret_volumes(plan: &BuildPlan, ssh_git: bool) -> Vec<Value> {
    let docker_config = |name: &str, secret: &str| {
        json!({
            "name": name,
            "secret": {"secretName": secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
        })
    };
    let mut volumes = vec![json!({"name": "handoff", "emptyDir": {}})];
    if let Some(secret) = &plan.secrets.push {
        volumes.push(docker_config("push-credentials", secret));
    }
    if let Some(secret) = &plan.secrets.pull {
        volumes.push(docker_config("pull-credentials", secret));
    }
    if let Some(secret) = plan.secrets.git.as_ref().filter(|_| ssh_git) {
        volumes.push(json!({
            "name": "git-credentials",
            // git-sync's documented setting: with the pod's fsGroup the kubelet makes it 0440.
            "secret": {"secretName": secret, "defaultMode": 0o400}
        }));
    }
    volumes
}

/// The builder's mounts of the handoff (written) and of the pull Secret (read-only).
pub(super) fn builder_mounts(plan: &BuildPlan) -> Vec<Value> {
    let mut mounts = vec![json!({"name": "handoff", "mountPath": HANDOFF_DIR})];
    if plan.secrets.pull.is_some() {
        mounts.push(
            json!({"name": "pull-credentials", "mountPath": PULL_AUTH_DIR, "readOnly": true}),
        );
    }
    mounts
}
