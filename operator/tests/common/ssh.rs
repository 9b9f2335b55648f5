//! A real OpenSSH server (Debian's openssh-server) on a free loopback port, serving git to
//! root with key authentication only. Everything it needs (host key, authorized_keys, its
//! config) lives in a temporary directory; stopped when dropped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::run;

pub struct SshServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The client's private key (OpenSSH format), the one authorized_keys accepts.
    pub client_key: String,
    /// A known_hosts line for this server's host key.
    pub known_hosts: String,
    pub log_file: PathBuf,
    child: Child,
}

/// Makes an ed25519 key pair at `path` (and `path.pub`) and returns the public key line.
pub fn keygen(path: &Path) -> String {
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "archforge-test",
            "-f",
        ])
        .arg(path));
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl SshServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_key");
        let host_pub = keygen(&host_key);
        let client_pub = keygen(&dir.path().join("client_key"));
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{client_pub}\n")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
                 StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nAllowUsers root\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 LogLevel VERBOSE\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .unwrap();
        // sshd insists on its privilege separation directory, even when never started as a service.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log_file = dir.path().join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn()
            .expect("openssh-server is installed (scripts/setup-host.sh)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SshServer {
            client_key: std::fs::read_to_string(dir.path().join("client_key")).unwrap(),
            known_hosts: format!("[127.0.0.1]:{port} {host_pub}\n"),
            port,
            log_file,
            dir,
            child,
        }
    }

    /// The ssh:// URL of the repository at `path` on this machine.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
