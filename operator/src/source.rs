//! Pinning a git ref to a commit, so that every platform of a run builds the same tree.
//!
//! Asks the git server directly over the smart HTTP protocol (the ref advertisement of
//! `info/refs?service=git-upload-pack`), so the operator needs no git binary. Shared by the
//! controller and the local executor.

use std::time::Duration;

/// The most of a ref advertisement read from a git server. The controller reads it from a
/// server the ImageBuild's author chose, so without a bound one endless answer fills the
/// operator's memory (shared by every namespace) before the 30 s timeout ends it. Real
/// advertisements are a line per ref: even repositories with 100 000 refs stay far below.
pub const MAX_ADVERTISEMENT_BYTES: usize = 16 * 1024 * 1024;

/// Credentials for an HTTP(S) git server.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitCredentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git server {url} unreachable: {message}")]
    Unreachable { url: String, message: String },

    #[error("{url} has no branch or tag {reference:?}")]
    RefNotFound { url: String, reference: String },

    #[error(
        "git server {url} refused the credentials (HTTP {status}){}; check the credentials secret",
        redirected_to.as_ref().map(|to| format!(" after a redirect to {to}, which is not given them")).unwrap_or_default()
    )]
    Credentials {
        url: String,
        status: u16,
        /// The scheme://host[:port] a redirect led to, when that is who refused: credentials
        /// go only to the host of the spec's URL.
        redirected_to: Option<String>,
    },

    #[error(
        "cannot resolve {reference:?} of {url} without cloning: only http(s) URLs are resolved; give a full commit SHA as ref for SSH and git:// repositories"
    )]
    UnsupportedScheme { url: String, reference: String },

    #[error("git server {url} answered unexpectedly: {message}")]
    Protocol { url: String, message: String },

    #[error(
        "git server {url} sent a ref advertisement larger than {limit} bytes ({mib} MiB), archforge's limit; give a full commit SHA as ref to skip the lookup",
        mib = limit / (1024 * 1024)
    )]
    AdvertisementTooLarge { url: String, limit: usize },
}

impl SourceError {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. })
    }

    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Unreachable { .. } => "GitUnreachable",
            SourceError::RefNotFound { .. } => "GitRefNotFound",
            SourceError::Credentials { .. } => "GitCredentials",
            SourceError::UnsupportedScheme { .. } => "GitRefUnresolvable",
            SourceError::Protocol { .. } => "GitProtocolError",
            SourceError::AdvertisementTooLarge { .. } => "GitAdvertisementTooLarge",
        }
    }
}

/// The URL without any `user:password@` part, for messages, logs and image annotations.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A full SHA-1 (40) or SHA-256 (64) object name, which needs no lookup.
pub fn is_full_sha(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64)
        && reference
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a smart-HTTP (protocol v0/v1) ref advertisement into `(sha, refname)` pairs.
pub fn parse_advertisement(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut refs = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated pkt-line".to_string());
        }
        let len_hex = std::str::from_utf8(&rest[..4]).map_err(|_| "bad pkt-line length")?;
        let len = usize::from_str_radix(len_hex, 16).map_err(|_| "bad pkt-line length")?;
        if len == 0 {
            rest = &rest[4..];
            continue;
        }
        if len < 4 || len > rest.len() {
            return Err(format!("pkt-line length {len} out of range"));
        }
        let line = &rest[4..len];
        rest = &rest[len..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"#") {
            continue;
        }
        // The first ref carries the capabilities after a NUL.
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let text = std::str::from_utf8(line).map_err(|_| "ref line is not UTF-8")?;
        if let Some((sha, name)) = text.split_once(' ')
            && is_full_sha(sha)
        {
            refs.push((sha.to_string(), name.to_string()));
        }
    }
    Ok(refs)
}

/// The commit a branch, tag or full ref name points at. Annotated tags are peeled to
/// their commit; a branch wins over a tag of the same name, as in git.
pub fn pick_commit(refs: &[(String, String)], reference: &str) -> Option<String> {
    let find = |name: &str| {
        refs.iter()
            .find(|(_, n)| n == name)
            .map(|(sha, _)| sha.clone())
    };
    let candidates = if reference.starts_with("refs/") || reference == "HEAD" {
        vec![reference.to_string()]
    } else {
        vec![
            format!("refs/heads/{reference}"),
            format!("refs/tags/{reference}"),
        ]
    };
    candidates
        .iter()
        .find_map(|name| find(&format!("{name}^{{}}")).or_else(|| find(name)))
}

/// How long the ref lookup may take, the whole answer read.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed request as people read it: a server that stalls shows as timed out (reqwest
/// would say "error decoding response body" of a body cut short by its timeout).
fn unreachable(shown: &str, e: reqwest::Error) -> SourceError {
    let message = if e.is_timeout() {
        format!(
            "timed out: no complete answer within {} s",
            LOOKUP_TIMEOUT.as_secs()
        )
    } else {
        e.without_url().to_string()
    };
    SourceError::Unreachable {
        url: shown.to_string(),
        message,
    }
}

/// Resolves `reference` of the repository at `url` to a commit SHA.
pub async fn resolve_commit(
    url: &str,
    reference: &str,
    credentials: Option<&GitCredentials>,
) -> Result<String, SourceError> {
    if is_full_sha(reference) {
        return Ok(reference.to_string());
    }
    let shown = redact_url(url);
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(SourceError::UnsupportedScheme {
            url: shown,
            reference: reference.to_string(),
        });
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(LOOKUP_TIMEOUT)
        .user_agent(concat!("git/archforge-", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SourceError::Protocol {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    let endpoint = format!(
        "{}/info/refs?service=git-upload-pack",
        url.trim_end_matches('/')
    );
    let mut request = client.get(&endpoint);
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let mut response = request.send().await.map_err(|e| unreachable(&shown, e))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let origin = |u: &reqwest::Url| u.origin().ascii_serialization();
        let asked = reqwest::Url::parse(url).ok();
        let answered = origin(response.url());
        return Err(SourceError::Credentials {
            url: shown.clone(),
            status: status.as_u16(),
            redirected_to: asked
                .filter(|asked| origin(asked) != answered)
                .map(|_| answered),
        });
    }
    if status.is_server_error() {
        return Err(SourceError::Unreachable {
            url: shown.clone(),
            message: format!("HTTP {status}"),
        });
    }
    if !status.is_success() {
        return Err(SourceError::Protocol {
            url: shown.clone(),
            message: format!(
                "HTTP {status} for {}/info/refs",
                shown.trim_end_matches('/')
            ),
        });
    }
    let too_large = || SourceError::AdvertisementTooLarge {
        url: shown.clone(),
        limit: MAX_ADVERTISEMENT_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ADVERTISEMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&shown, e))? {
        if body.len() + chunk.len() > MAX_ADVERTISEMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let refs = parse_advertisement(&body).map_err(|message| SourceError::Protocol {
        url: shown.clone(),
        message,
    })?;
    pick_commit(&refs, reference).ok_or_else(|| SourceError::RefNotFound {
        url: shown.clone(),
        reference: reference.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn parses_and_picks() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let body = [
            pkt("# service=git-upload-pack\n"),
            "0000".to_string(),
            pkt(&format!(
                "{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{a} refs/heads/main\n")),
            pkt(&format!("{b} refs/tags/v1\n")),
            pkt(&format!("{c} refs/tags/v1^{{}}\n")),
            pkt(&format!("{b} refs/heads/v1\n")),
            "0000".to_string(),
        ]
        .concat();
        let refs = parse_advertisement(body.as_bytes()).unwrap();
        assert_eq!(refs.len(), 5);
        assert_eq!(pick_commit(&refs, "main"), Some(a.clone()));
        assert_eq!(pick_commit(&refs, "HEAD"), Some(a));
        assert_eq!(
            pick_commit(&refs, "refs/tags/v1"),
            Some(c),
            "annotated tags are peeled"
        );
        assert_eq!(
            pick_commit(&refs, "v1"),
            Some(b),
            "a branch wins over a tag"
        );
        assert_eq!(pick_commit(&refs, "nope"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_advertisement(b"zzzz").is_err());
        assert!(parse_advertisement(b"00ffshort").is_err());
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://bot:t0ken@git.example.com/a/b.git"),
            "https://git.example.com/a/b.git"
        );
        assert_eq!(
            redact_url("https://git.example.com/a@b.git"),
            "https://git.example.com/a@b.git"
        );
        assert_eq!(redact_url("ssh://git@host/repo.git"), "ssh://host/repo.git");
        assert_eq!(
            redact_url("git@github.com:a/b.git"),
            "git@github.com:a/b.git"
        );
    }

    #[tokio::test]
    async fn resolution_errors_never_show_credentials() {
        // Nothing listens on port 9 of loopback: the connection is refused at once.
        let err = resolve_commit("http://bot:t0ken@127.0.0.1:9/repo.git", "main", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains("t0ken"), "{err}");
        assert!(err.contains("127.0.0.1:9"), "{err}");
    }

    /// A hostile git server: answers every `info/refs` with endless flush-pkts (which parse
    /// as a valid, empty advertisement), until the client goes away or, so that a client
    /// without a bound cannot exhaust the machine, `SAFETY_STOP` bytes. Returns what it sent.
    async fn endless_advertisement_server() -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SAFETY_STOP: usize = 256 * 1024 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before asking");
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let chunk = "0000".repeat(16 * 1024).into_bytes();
            let mut sent = 0;
            while sent < SAFETY_STOP {
                if socket.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        (url, server)
    }

    #[tokio::test]
    async fn an_endless_advertisement_is_cut_off_at_the_limit() {
        let (url, server) = endless_advertisement_server().await;
        let err = resolve_commit(&url, "main", None).await.unwrap_err();
        let sent = server.await.unwrap();
        assert!(
            matches!(err, SourceError::AdvertisementTooLarge { limit, .. } if limit == MAX_ADVERTISEMENT_BYTES),
            "{err:?}"
        );
        assert!(!err.is_transient(), "retrying cannot help");
        assert_eq!(err.reason(), "GitAdvertisementTooLarge");
        let message = err.to_string();
        assert!(message.contains("16 MiB"), "{message}");
        assert!(message.contains(&url), "{message}");
        // The cap plus what the kernel's socket buffers hold: the client stopped reading.
        assert!(
            sent < 2 * MAX_ADVERTISEMENT_BYTES,
            "the server sent {sent} bytes before the client hung up"
        );
    }

    #[test]
    fn full_shas_need_no_lookup() {
        assert!(is_full_sha(&"0".repeat(40)));
        assert!(is_full_sha(&"f".repeat(64)));
        assert!(!is_full_sha(&"F".repeat(40)));
        assert!(!is_full_sha("main"));
    }
}
