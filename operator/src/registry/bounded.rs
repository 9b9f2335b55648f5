//! Reading what a registry sends without trusting it: every body is read against a limit
//! (never sized by the registry's own word), hashed as it is read, and any of its text that
//! goes into a message is cut short and kept to one line.

use sha2::{Digest, Sha256};

/// The most a manifest may weigh: the OCI distribution spec lets registries refuse manifests
/// over 4 MiB, so no conforming image has a bigger one.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The most an image config may weigh. Real configs are a few KiB (history and labels); the
/// manifest's limit is the guide.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// How much of an error answer is read, to quote its first lines.
const MAX_ERROR_BYTES: u64 = 64 << 10;
/// How much of a registry's error text goes into a message (status, Events).
const MAX_QUOTED_CHARS: usize = 300;

/// `sha256:<hex>` of what `hasher` has read.
pub(super) fn digest_of(hasher: Sha256) -> String {
    format!("sha256:{}", hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest (`sha256:<hex>`) of exactly these bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    digest_of(hasher)
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits: the only form archforge hashes,
/// and the only one allowed into a URL path (a hostile manifest's "digest" could otherwise
/// be `../../other/manifests/x` or carry a query).
pub(super) fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A registry's text, cut short and kept to one printable line, fit for a message.
pub(super) fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTED_CHARS)
        .collect();
    if text.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out.trim().to_string()
}

/// Reads at most `limit` bytes of the body. `Ok(None)` when the body is longer: the rest is
/// not read, and dropping the response closes the connection.
pub(super) async fn read_at_most(
    response: &mut reqwest::Response,
    limit: u64,
    mut hasher: Option<&mut Sha256>,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The first `MAX_ERROR_BYTES` of an error answer, as text for a message.
pub(super) async fn error_text(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BYTES as usize - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BYTES as usize {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) if !envelope.errors.is_empty() => envelope
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).into_owned(),
    };
    quote(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_reach_a_url() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(is_sha256_digest(&good));
        assert!(!is_sha256_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256_digest(&format!("sha512:{}", "a".repeat(128))));
        assert!(!is_sha256_digest("sha256:../../x/manifests/latest"));
        assert!(!is_sha256_digest(&format!("{good}?x=1")));
    }

    #[test]
    fn quotes_are_short_single_lines() {
        assert_eq!(quote("a\nb"), "a b");
        let long = "x".repeat(10_000);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
