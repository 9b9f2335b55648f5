//! Signed SLSA provenance: the operator signs and attests every platform image and the
//! index with the key of a Secret in the ImageBuild's namespace, `archforge verify` follows
//! the chain, and no per-platform tag is left behind. A run whose key Secret is missing or
//! malformed fails before any Job exists, without a byte of the key in what it says.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use archforge::api::Phase;
use archforge::supply::verify::verify_image;
use archforge::supply::{SigningKey, attachment_tag};
use archforge_e2e::signing::{key_secret, leaks, platform_tags_left, repository_tags, verify_args};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, condition, describe};

const KEY_SECRET: &str = "signing-key";

/// Every child and the index signed and attested, their digests in status, verified with
/// `archforge verify` and the library's verifier (each provenance naming the run's commit
/// and the platform the index claims); only the output tag and cosign's attachment tags in
/// the repository. Then the missing and the malformed Secret: Failed with
/// SigningKeyMissing / SigningKeyInvalid, a Warning Event, no Job, no key material.
pub async fn signed_provenance_for_every_platform(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    let secrets: Api<Secret> = Api::namespaced(suite.client.clone(), &case.namespace);
    let key = SigningKey::generate();
    let pem = key.to_pkcs8_pem();
    secrets
        .create(
            &PostParams::default(),
            &key_secret(KEY_SECRET, pem.as_bytes(), None),
        )
        .await?;
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    manifest["spec"]["output"]["signing"] = json!({"keySecret": KEY_SECRET});
    case.apply(&manifest).await?;
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    let image = status.image.clone().context("status.image")?;
    let commit = status
        .source
        .as_ref()
        .map(|s| s.commit.clone())
        .context("status.source.commit")?;

    // Status names every attachment.
    ensure!(
        status.signature.is_some() && status.attestation.is_some(),
        "status.signature {:?}, status.attestation {:?}",
        status.signature,
        status.attestation
    );
    for p in &status.platforms {
        ensure!(
            p.signature.is_some() && p.attestation.is_some(),
            "{}: signature {:?}, attestation {:?}",
            p.platform,
            p.signature,
            p.attestation
        );
    }
    let entries: BTreeMap<String, String> = super::pushed_index(&suite.registry, &status)
        .await?
        .into_iter()
        .collect();
    ensure!(
        entries.keys().map(String::as_str).collect::<Vec<_>>() == [AMD64, ARM64],
        "index entries: {entries:?}"
    );

    // The real command line, as a user runs it.
    let public = suite.logs.join(format!("{}-cosign.pub", case.namespace));
    std::fs::write(&public, key.public_pem())?;
    let output = std::process::Command::new(&suite.settings.operator)
        .args(verify_args(&suite.settings, &image, &public))
        .output()
        .with_context(|| format!("running {}", suite.settings.operator.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "archforge verify {image} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        stdout.contains("signatures verified"),
        "archforge verify: {stdout}"
    );
    for platform in [AMD64, ARM64, "index"] {
        ensure!(
            stdout
                .lines()
                .any(|l| l.contains("provenance") && l.contains(platform) && l.contains(&commit)),
            "archforge verify names no provenance of {platform} at {commit}: {stdout}"
        );
    }

    // The library's verifier, link by link against status and the index.
    let verified = verify_image(&suite.registry, &image, &key.public_key()).await?;
    ensure!(
        Some(&verified.index.digest) == status.digest.as_ref() && verified.index.commit == commit,
        "verified index {:?}, status digest {:?} at {commit}",
        verified.index,
        status.digest
    );
    let children: BTreeMap<String, String> = verified
        .platforms
        .iter()
        .map(|p| (p.platform.clone(), p.digest.clone()))
        .collect();
    ensure!(
        children == entries,
        "verified {children:?}, index {entries:?}"
    );
    ensure!(
        verified.platforms.iter().all(|p| p.commit == commit),
        "every child's provenance names {commit}: {:?}",
        verified.platforms
    );
    ensure!(
        verify_image(
            &suite.registry,
            &image,
            &SigningKey::generate().public_key()
        )
        .await
        .is_err(),
        "{image} verified with a key that never signed it"
    );

    // platformTags is false by default: the output tag and attachments, nothing per platform.
    let tags = repository_tags(&suite.registry, &image).await?;
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let left = platform_tags_left(&tags, tag);
    ensure!(left.is_empty(), "per-platform tags left behind: {left:?}");
    for digest in entries.values().chain(status.digest.iter()) {
        for suffix in ["sig", "att"] {
            let attached = attachment_tag(digest, suffix).context("a sha256 digest")?;
            ensure!(
                tags.contains(&attached),
                "no {attached} in the repository: {tags:?}"
            );
        }
    }

    // A Secret that does not exist, then one whose key is cut short.
    stalls_before_any_job(case, "no-secret", "absent-key", "SigningKeyMissing", &[]).await?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let cut = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        &body[..body.len() - 16]
    );
    secrets
        .create(
            &PostParams::default(),
            &key_secret("bad-key", cut.as_bytes(), None),
        )
        .await?;
    stalls_before_any_job(case, "bad-key", "bad-key", "SigningKeyInvalid", &[body]).await
}

/// ImageBuild `name` signing with Secret `secret` fails with `reason` before any Job, with
/// a Warning Event, and none of `secrets` in its status, Events or the operator's log.
async fn stalls_before_any_job(
    case: &Case,
    name: &str,
    secret: &str,
    reason: &str,
    secrets: &[String],
) -> anyhow::Result<()> {
    let mut manifest = case.manifest(name, &[AMD64, ARM64]);
    manifest["spec"]["output"]["signing"] = json!({"keySecret": secret});
    case.apply(&manifest).await?;
    let status = case
        .wait_phase(name, Phase::Failed, Duration::from_secs(120))
        .await?;
    let stalled = condition(&status, "Stalled")?;
    ensure!(
        stalled.status == "True" && stalled.reason == reason && stalled.message.contains(secret),
        "Stalled should be True/{reason}, naming Secret {secret}: {}",
        describe(&status)
    );
    case.expect_event(name, reason, "Warning").await?;
    let notes = case.event_notes(name, reason).await?;
    let log = case.operator.lock().unwrap().log().to_path_buf();
    let said = format!(
        "{}\n{}\n{}",
        serde_json::to_string(&status)?,
        notes.join("\n"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for s in secrets {
        if let Some(piece) = leaks(&said, s) {
            bail!("key material {piece:?} in the status, an Event or the operator log");
        }
    }
    // Give a wrongly started run time to show its Jobs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        case.jobs_ever(name).is_empty(),
        "{name} got Jobs: {:?}",
        case.jobs_ever(name)
    );
    Ok(())
}
