//! Git servers on loopback that misbehave on purpose: one that never answers, one that
//! advertises refs without end. Plain threads; each connection is served until the client
//! leaves.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Accepts every connection and never writes a byte (a server that hangs after connect).
pub struct StallingServer {
    pub port: u16,
    /// The connections, held open so that the client sees no end of file.
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl StallingServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        StallingServer { port, _held: held }
    }
}

/// A `git://` server whose ref advertisement is `bytes` long (then a flush packet): a
/// protocol-v0 answer of one branch after another, as a hostile server can send. Every
/// branch is named `b<n>/main`, so that `git ls-remote <url> main` prints them all.
pub struct RefFlood {
    pub port: u16,
}

impl RefFlood {
    pub fn start(bytes: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || flood(stream, bytes));
            }
        });
        RefFlood { port }
    }
}

fn pkt_line(payload: &str) -> String {
    format!("{:04x}{payload}", payload.len() + 4)
}

fn flood(mut stream: TcpStream, bytes: usize) {
    // The client's request: one pkt-line naming the repository.
    let mut request = [0u8; 4096];
    let _ = stream.read(&mut request);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut sent = 0;
    let mut batch = pkt_line(&format!("{sha} HEAD\0multi_ack\n"));
    let mut branch = 0u64;
    while sent < bytes {
        while batch.len() < 64 * 1024 {
            batch.push_str(&pkt_line(&format!("{sha} refs/heads/b{branch}/main\n")));
            branch += 1;
        }
        if stream.write_all(batch.as_bytes()).is_err() {
            return;
        }
        sent += batch.len();
        batch.clear();
    }
    let _ = stream.write_all(b"0000");
    // As git daemon does: the client ends the session (its own flush packet, then close);
    // closing first would make git's last write a SIGPIPE.
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}
