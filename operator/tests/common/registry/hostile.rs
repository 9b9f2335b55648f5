//! A hostile registry: a small HTTP/1.1 server on loopback that speaks just enough of the
//! distribution API (`/v2/`, one manifest, one config blob, manifest PUT) to serve what a real
//! registry would refuse to store: configs far bigger than their descriptor says, manifests
//! over any sane size, bytes that do not hash to the digest asked for, and a push answer that
//! names another digest; redirects (of reads, of the push, of the token endpoint), a challenge
//! for credentials with a token endpoint at `/token`, and bodies cut off mid-way. It counts
//! what it sent, so a test can tell how much a client read before it hung up, and records
//! every Authorization header it was sent, so a test can tell which host got credentials.
//! A test double because docker-registry cannot be made to lie.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use archforge::registry::sha256_digest;

/// What the server answers for a manifest or blob GET.
#[derive(Clone, Debug)]
pub enum Body {
    /// These bytes, with their true Content-Length.
    Exact(Vec<u8>),
    /// `prefix`, then filler up to `total` bytes, chunked: no length announced beforehand.
    Chunked { prefix: Vec<u8>, total: u64 },
    /// `prefix`, then filler up to `total` bytes, with `Content-Length: total`.
    Announced { prefix: Vec<u8>, total: u64 },
    /// An error status with a short JSON body.
    Status(u16),
    /// A redirect (`status` 301, 302, 303, 307 or 308) to `location`.
    Redirect { status: u16, location: String },
    /// `Content-Length: total`, then only `prefix`, then the connection is closed.
    Truncated { prefix: Vec<u8>, total: u64 },
}

/// What the hostile registry serves.
#[derive(Clone, Debug)]
pub struct Script {
    /// The manifest, served for any digest under `/v2/<repo>/manifests/`.
    pub manifest: Body,
    pub manifest_type: String,
    /// The config, served for any digest under `/v2/<repo>/blobs/`.
    pub config: Body,
    /// The digest named in the Location and Docker-Content-Digest of a manifest PUT answer;
    /// the true digest of the pushed bytes when `None`.
    pub push_digest: Option<String>,
}

/// What the hostile registry does beyond serving its `Script`: kept apart so that a
/// `Script` literal (in tests and benches) does not change as these are added.
#[derive(Clone, Debug, Default)]
pub struct Tricks {
    /// When set, any manifest or blob request without an Authorization header is answered
    /// 401 with this `WWW-Authenticate` challenge (any header is accepted).
    pub challenge: Option<String>,
    /// The answer to a manifest PUT instead of storing it (a redirect, say).
    pub push: Option<Body>,
    /// The answer at `/token`; `{"token":"t"}` when `None`.
    pub token: Option<Body>,
}

impl Default for Script {
    /// Nothing to serve: every manifest and blob is 404.
    fn default() -> Self {
        Script {
            manifest: Body::Status(404),
            manifest_type: "application/json".into(),
            config: Body::Status(404),
            push_digest: None,
        }
    }
}

/// What the server has done so far.
#[derive(Default, Debug)]
pub struct Stats {
    /// Body bytes of manifest answers the client accepted (written to its socket).
    pub manifest_bytes_sent: AtomicU64,
    /// Body bytes of blob answers the client accepted.
    pub blob_bytes_sent: AtomicU64,
    pub manifest_gets: AtomicUsize,
    pub blob_gets: AtomicUsize,
    pub pushes: AtomicUsize,
    /// `METHOD path` of every request, in order.
    pub requests: Mutex<Vec<String>>,
    /// `METHOD path: Authorization` of every request that carried credentials, in order.
    pub authorized: Mutex<Vec<String>>,
}

/// How many of each request the server has answered, to compare in one assertion.
#[derive(Debug, PartialEq, Eq)]
pub struct Counts {
    pub manifest_gets: usize,
    pub blob_gets: usize,
    pub pushes: usize,
}

pub struct HostileRegistry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub stats: Arc<Stats>,
}

/// A manifest whose config descriptor says `config_size` bytes of `config_digest`.
pub fn manifest_json(config_digest: &str, config_size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [],
    }))
    .unwrap()
}

/// The start of an amd64 image config, to be followed by filler.
pub fn config_prefix() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","padding":""#.to_vec()
}

impl HostileRegistry {
    pub fn start(script: Script) -> Self {
        Self::start_with(script, Tricks::default())
    }

    /// Serves `script`, and plays `tricks`.
    pub fn start_with(script: Script, tricks: Tricks) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(Stats::default());
        let script = Arc::new((script, tricks));
        let served = stats.clone();
        // Detached: the listener lives as long as the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (script, stats) = (script.clone(), served.clone());
                std::thread::spawn(move || serve(stream, &script.0, &script.1, &stats));
            }
        });
        HostileRegistry { addr, stats }
    }

    /// `host:port/name:tag` in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            manifest_gets: self.stats.manifest_gets.load(Ordering::Relaxed),
            blob_gets: self.stats.blob_gets.load(Ordering::Relaxed),
            pushes: self.stats.pushes.load(Ordering::Relaxed),
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.stats.requests.lock().unwrap().clone()
    }

    /// `METHOD path: Authorization` of the requests that carried credentials.
    pub fn authorized(&self) -> Vec<String> {
        self.stats.authorized.lock().unwrap().clone()
    }
}

static FILLER: [u8; 64 << 10] = [b' '; 64 << 10];

/// Writes `prefix` and filler up to `total` bytes, chunked or not; stops at the first write
/// the client refuses (it hung up) and counts what was accepted.
fn write_body(
    stream: &mut TcpStream,
    prefix: &[u8],
    total: u64,
    chunked: bool,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut written = 0u64;
    let piece = |stream: &mut TcpStream, bytes: &[u8]| -> std::io::Result<()> {
        if chunked {
            write!(stream, "{:x}\r\n", bytes.len())?;
            stream.write_all(bytes)?;
            stream.write_all(b"\r\n")?;
        } else {
            stream.write_all(bytes)?;
        }
        sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let head = &prefix[..prefix.len().min(total as usize)];
    piece(stream, head)?;
    written += head.len() as u64;
    while written < total {
        let n = FILLER.len().min((total - written) as usize);
        piece(stream, &FILLER[..n])?;
        written += n as u64;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

fn respond(
    stream: &mut TcpStream,
    body: &Body,
    content_type: &str,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    match body {
        Body::Exact(bytes) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
                bytes.len(),
                sha256_digest(bytes)
            )?;
            stream.write_all(bytes)?;
            sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Body::Chunked { prefix, total } | Body::Announced { prefix, total } => {
            let chunked = matches!(body, Body::Chunked { .. });
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {total}")
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n"
            )?;
            write_body(stream, prefix, *total, chunked, sent)
        }
        Body::Status(code) => {
            let body =
                format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"scripted {code}"}}]}}"#);
            write!(
                stream,
                "HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        Body::Redirect { status, location } => write!(
            stream,
            "HTTP/1.1 {status} Scripted\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ),
        Body::Truncated { prefix, total } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {total}\r\n\r\n"
            )?;
            stream.write_all(prefix)?;
            sent.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            // The error ends `serve`, which drops the stream: the connection closes mid-body.
            Err(std::io::Error::other("hung up mid-body, as scripted"))
        }
    }
}

/// Keeps the server's own socket buffer small, so that what it counts as sent is what the
/// client's side took (its receive buffer still holds some MiB the client never read).
fn small_send_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 64 << 10;
    // SAFETY: a valid socket and a c_int option value of the right length.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn serve(stream: TcpStream, script: &Script, tricks: &Tricks, stats: &Stats) {
    small_send_buffer(&stream);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let mut length = 0usize;
        let mut authorization = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(value.trim().to_string());
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        stats
            .requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));
        if let Some(authorization) = &authorization {
            stats
                .authorized
                .lock()
                .unwrap()
                .push(format!("{method} {path}: {authorization}"));
        }
        let guarded = path.contains("/manifests/") || path.contains("/blobs/");
        let result = match (method.as_str(), path.as_str()) {
            ("GET", "/v2/") => stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            ),
            (_, _) if guarded && authorization.is_none() && tricks.challenge.is_some() => write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {}\r\nContent-Length: 0\r\n\r\n",
                tricks.challenge.as_deref().unwrap_or_default()
            ),
            ("GET", p) if p.starts_with("/token") => match &tricks.token {
                Some(body) => respond(
                    &mut stream,
                    body,
                    "application/json",
                    &stats.manifest_bytes_sent,
                ),
                None => stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"token\":\"t\"}",
                ),
            },
            ("GET", p) if p.contains("/manifests/") => {
                stats.manifest_gets.fetch_add(1, Ordering::Relaxed);
                respond(
                    &mut stream,
                    &script.manifest,
                    &script.manifest_type,
                    &stats.manifest_bytes_sent,
                )
            }
            ("GET", p) if p.contains("/blobs/") => {
                stats.blob_gets.fetch_add(1, Ordering::Relaxed);
                respond(
                    &mut stream,
                    &script.config,
                    "application/octet-stream",
                    &stats.blob_bytes_sent,
                )
            }
            ("PUT", p) if p.contains("/manifests/") => {
                stats.pushes.fetch_add(1, Ordering::Relaxed);
                let digest = script
                    .push_digest
                    .clone()
                    .unwrap_or_else(|| sha256_digest(&body));
                let repo = p
                    .trim_start_matches("/v2/")
                    .split("/manifests/")
                    .next()
                    .unwrap_or_default();
                match &tricks.push {
                    Some(answer) => respond(&mut stream, answer, "application/json", &AtomicU64::new(0)),
                    None => write!(
                        stream,
                        "HTTP/1.1 201 Created\r\nLocation: /v2/{repo}/manifests/{digest}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: 0\r\n\r\n"
                    ),
                }
            }
            _ => stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            ),
        };
        if result.is_err() {
            return;
        }
    }
}
