//! The last step of a run: the index of the platforms that succeeded, published (signed and
//! attested when the run asks for it).

use std::time::Instant;

use kube::runtime::controller::Action;

use super::act::{PARTIAL, finish_run};
use super::error::{ReconcileError, Result};
use super::observe::{read_secret, secret_value};
use super::report::{Note, report};
use super::signing::{build_facts, signing_key};
use super::{Context, Run, now};
use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::plan::BuildPlan;
use crate::registry::{
    DockerConfig, PlatformImage, Published, Registry, RegistryOptions, run_annotations,
};
use crate::source::redact_url;
use crate::status::set_phase_conditions;
use crate::supply::Signer;

/// Publishes the run's index and ends the run. A transient registry failure keeps the
/// digests (the retry only assembles again), is reported, and is retried.
pub async fn assemble_step(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    run: &mut Run,
    notes: &mut Vec<Note>,
) -> Result<Action> {
    match assemble(ctx, build, &run.status, plan).await {
        Ok(published) => {
            pushed(ctx, build, run, &published, notes);
            Ok(Action::await_change())
        }
        Err(ReconcileError::Assemble(e)) if e.is_transient() => {
            let (reason, message) = (e.reason(), e.to_string());
            let generation = plan.generation;
            let phase = Phase::Assembling;
            set_phase_conditions(&mut run.status, phase, reason, &message, generation, now());
            notes.push(Note::warning(reason, "Assemble", message, None));
            report(ctx, build, &run.status, std::mem::take(notes)).await?;
            Err(ReconcileError::Assemble(e))
        }
        Err(e @ ReconcileError::ReadSecret { .. }) => Err(e),
        Err(e) => {
            let message = e.to_string();
            finish_run(ctx, run, Phase::Failed, e.reason(), &message);
            notes.push(Note::warning(e.reason(), "Assemble", message, None));
            Ok(Action::await_change())
        }
    }
}

/// The index is pushed: the run succeeded (without the platforms that may fail and did).
fn pushed(
    ctx: &Context,
    build: &ImageBuild,
    run: &mut Run,
    published: &Published,
    notes: &mut Vec<Note>,
) {
    let digest = published.index.digest.clone();
    record_attachments(&mut run.status, published);
    let mut message = format!("pushed {} ({digest})", build.spec.output.image);
    if published.index_attachments.is_some() {
        message.push_str(&format!(
            "; the index and its {} platform images are signed, with SLSA provenance attested",
            published.platforms.len()
        ));
    }
    let missing: Vec<&str> = run
        .status
        .platforms
        .iter()
        .filter(|p| p.phase == Phase::Failed)
        .map(|p| p.platform.as_str())
        .collect();
    let reason = match missing.is_empty() {
        true => "IndexPushed",
        false => {
            message.push_str(&format!(
                " without {}, which may fail and failed (see status.platforms)",
                missing.join(", ")
            ));
            let text = message.clone();
            notes.push(Note::warning("PlatformsMissing", "Assemble", text, None));
            PARTIAL
        }
    };
    run.status.image = Some(build.spec.output.image.clone());
    run.status.digest = Some(digest);
    finish_run(ctx, run, Phase::Succeeded, reason, &message);
    notes.push(Note::normal("IndexPushed", "Assemble", message, None));
}

/// Writes the digests of the signatures and attestations `published` attached into status:
/// each platform's, and the index's.
fn record_attachments(status: &mut ImageBuildStatus, published: &Published) {
    for (platform, attached) in &published.platforms {
        let name = platform.to_string();
        if let Some(p) = status.platforms.iter_mut().find(|p| p.platform == name) {
            p.signature = Some(attached.signature.clone());
            p.attestation = Some(attached.attestation.clone());
        }
    }
    status.signature = published
        .index_attachments
        .as_ref()
        .map(|a| a.signature.clone());
    status.attestation = published
        .index_attachments
        .as_ref()
        .map(|a| a.attestation.clone());
}

/// Publishes the index of a run whose platforms all succeeded: signed and attested, each
/// child and the index, when the run asks for it.
async fn assemble(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    plan: &BuildPlan,
) -> Result<Published> {
    // Before any push: a key that went missing since the Jobs started publishes nothing.
    let key = signing_key(ctx, build).await?;
    // Only the ImageBuild's own push credentials, anonymous without: the operator never
    // writes into a repository with more rights than the ImageBuild grants. Registry trust
    // (CAs, plain-HTTP hosts) and retries stay the operator's.
    let mut options = RegistryOptions {
        credentials: DockerConfig::default(),
        ..ctx.config.registry.clone()
    };
    if let Some(name) = &build.spec.output.push_secret {
        let secret = read_secret(ctx, build, name).await?;
        let config =
            secret_value(&secret, ".dockerconfigjson").ok_or(ReconcileError::SecretKeys {
                name: name.clone(),
                keys: ".dockerconfigjson",
            })?;
        options.credentials = DockerConfig::from_json(name, &config)?;
    }
    // Only what succeeded: a platform allowed to fail that failed is left out.
    let images: Vec<PlatformImage> = plan
        .platforms
        .iter()
        .zip(&status.platforms)
        .filter(|(_, s)| s.phase == Phase::Succeeded)
        .map(|(p, s)| PlatformImage {
            platform: p.platform.clone(),
            digest: s.digest.clone().unwrap_or_default(),
        })
        .collect();
    // Taken from the run, not the clock, so a retried assembly pushes identical bytes.
    let created = status
        .platforms
        .iter()
        .filter_map(|p| p.completion_time.clone())
        .max()
        .unwrap_or_default();
    let annotations = run_annotations(
        &redact_url(&build.spec.source.git.url),
        &plan.revision,
        &created,
    );
    let facts = build_facts(&ctx.config, build, plan, status, &created);
    let signer = key.as_deref().map(|key| Signer { key, facts: &facts });
    let started = Instant::now();
    let published = Registry::new(options)
        .publish(
            &build.spec.output.image,
            &images,
            plan.media_type,
            &annotations,
            signer.as_ref(),
        )
        .await?;
    ctx.metrics
        .assembly_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(published)
}
