//! `archforge verify`: checks a signed index link by link ([`crate::supply::verify`]) and
//! what the caller requires of its provenance (`--source`, `--require-isolated`).

use super::RegistryArgs;
use crate::registry::Registry;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The image index: HOST/REPO:TAG or HOST/REPO@sha256:...
    pub image: String,

    /// The signer's public key (PEM PUBLIC KEY, as cosign.pub).
    #[arg(long)]
    pub key: String,

    /// The git repository URL the provenance must name (exactly as the ImageBuild's
    /// spec.source.git.url). An operator-wide key signs every tenant's builds alike: without
    /// it, a verified signature says archforge built the image, not from what.
    #[arg(long)]
    pub source: Option<String>,

    /// Fail unless the provenance of the index and of every platform image says it was
    /// built in the operator's isolated build namespace (`internalParameters.isolated`),
    /// out of tenants' reach: a build in its ImageBuild's own namespace does not pass.
    #[arg(long)]
    pub require_isolated: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `archforge verify`: the lines it prints on success, or the first broken link.
pub(super) async fn verify(args: &VerifyArgs) -> Result<Vec<String>, String> {
    let pem = std::fs::read(&args.key).map_err(|e| format!("cannot read {}: {e}", args.key))?;
    let key = crate::supply::load_public_key(&pem).map_err(|e| format!("{}: {e}", args.key))?;
    let trust = args.registry.trust().map_err(|e| e.to_string())?;
    let registry = Registry::new(args.registry.options(&trust).map_err(|e| e.to_string())?);
    let verified = crate::supply::verify::verify_image(&registry, &args.image, &key)
        .await
        .map_err(|e| format!("verification failed: {e}"))?;
    if let Some(source) = &args.source
        && *source != verified.index.source
    {
        return Err(format!(
            "verification failed: index {}: its provenance names source {}, --source is {source}",
            verified.index.subject,
            crate::registry::quote_untrusted(&verified.index.source)
        ));
    }
    if args.require_isolated {
        verified
            .require_isolated()
            .map_err(|e| format!("verification failed: {e}"))?;
    }
    let mut lines = vec![format!(
        "signatures verified: the index and {} platform image(s), key {}",
        verified.platforms.len(),
        key.fingerprint()
    )];
    for image in verified.platforms.iter().chain([&verified.index]) {
        let built = match &image.build_namespace {
            Some(ns) => format!("isolated in {}", crate::registry::quote_untrusted(ns)),
            None => "not isolated".to_string(),
        };
        lines.push(format!(
            "provenance {:<14} {}  commit {}  source {}  {built}",
            image.platform,
            image.subject,
            image.commit,
            crate::registry::quote_untrusted(&image.source)
        ));
    }
    Ok(lines)
}
