//! A real registry (Debian's `docker-registry`, Distribution 2.8) on a free loopback port, in
//! one of three modes, stopped when dropped. Shared by tests and benchmarks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archforge::registry::{DockerConfig, RegistryOptions, RetryPolicy};

use super::run;

pub mod hostile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain HTTP, anonymous.
    Plain,
    /// Plain HTTP with htpasswd (bcrypt) basic auth.
    Htpasswd,
    /// HTTPS with a certificate signed by a throwaway CA.
    Tls,
}

pub const USER: &str = "archforge";
pub const PASSWORD: &str = "s3cret-pass";

pub struct TestRegistry {
    pub mode: Mode,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    /// The CA that signed the TLS certificate (TLS mode).
    pub ca_file: Option<PathBuf>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn make_ca_and_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("registry.key");
    let csr = dir.join("registry.csr");
    let cert = dir.join("registry.crt");
    let ext = dir.join("san.ext");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=archforge test CA",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    (ca, cert, key)
}

impl TestRegistry {
    pub fn start(mode: Mode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut ca_file = None;
        if mode == Mode::Tls {
            let (ca, cert, key) = make_ca_and_cert(dir.path());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_file = Some(ca);
        }
        if mode == Mode::Htpasswd {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(out.status.success());
            std::fs::write(&htpasswd, out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: archforge-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).unwrap();
        let log_file = dir.path().join("access.log");
        let mut registry = TestRegistry {
            mode,
            addr,
            config_file,
            log_file,
            ca_file,
            child: None,
            dir,
        };
        registry.launch();
        registry
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config_file)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                std::fs::read_to_string(&self.log_file).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry process; its storage stays, so `restart` serves the same images.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// `host:port/name:tag` in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Docker config JSON with this registry's credentials (right or wrong).
    pub fn docker_config_json(&self, password: &str) -> String {
        serde_json::json!({"auths": {self.addr.clone(): {"username": USER, "password": password}}})
            .to_string()
    }

    /// The options a client needs to reach this registry successfully.
    pub fn options(&self) -> RegistryOptions {
        let mut options = RegistryOptions {
            retry: RetryPolicy {
                attempts: 3,
                first_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(500),
            },
            ..Default::default()
        };
        match self.mode {
            Mode::Plain => options.insecure.push(self.addr.clone()),
            Mode::Htpasswd => {
                options.insecure.push(self.addr.clone());
                options.credentials =
                    DockerConfig::from_json("test", self.docker_config_json(PASSWORD).as_bytes())
                        .unwrap();
            }
            Mode::Tls => options
                .add_ca_file(&self.ca_file.as_ref().unwrap().display().to_string())
                .unwrap(),
        }
        options
    }

    /// HTTP requests the registry has answered so far, counted from its access log.
    pub fn requests_served(&self) -> usize {
        let file = std::fs::File::open(&self.log_file).unwrap();
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|line| line.contains("] \"") && line.contains(" HTTP/"))
            .count()
    }

    /// `skopeo` arguments that make it trust or reach this registry.
    pub fn skopeo_tls_args(&self) -> Vec<String> {
        match self.mode {
            Mode::Tls => {
                let certs = self.dir.path().join("skopeo-certs");
                std::fs::create_dir_all(&certs).unwrap();
                std::fs::copy(self.ca_file.as_ref().unwrap(), certs.join("ca.crt")).unwrap();
                vec![format!("--cert-dir={}", certs.display())]
            }
            Mode::Htpasswd => vec![
                "--tls-verify=false".into(),
                format!("--creds={USER}:{PASSWORD}"),
            ],
            Mode::Plain => vec!["--tls-verify=false".into()],
        }
    }

    /// `skopeo inspect` of `reference` in this registry, with extra arguments.
    pub fn skopeo_inspect(&self, reference: &str, extra: &[&str]) -> String {
        let out = Command::new("skopeo")
            .arg("inspect")
            .args(self.skopeo_tls_args())
            .args(extra)
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl TestRegistry {
    /// `skopeo copy` of `reference` into a fresh `dir:` directory (manifest.json plus blobs
    /// named by their hex digest), with extra arguments such as `--override-arch`.
    pub fn skopeo_copy_to_dir(&self, reference: &str, extra: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("skopeo")
            .arg("copy")
            .args(extra)
            .args(
                self.skopeo_tls_args()
                    .iter()
                    .map(|a| a.replacen("--", "--src-", 1)),
            )
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dir.path().display()))
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "skopeo copy {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Synthetic linux/amd64 and linux/arm64 images (marked `marker`) pushed through `registry`,
/// each to `reference(platform)`: a `<repository>@@unknown-digest@@` reference pushes by
/// digest only, as the builders do without platform tags.
pub async fn push_platform_images(
    registry: &archforge::registry::Registry,
    reference: impl Fn(&archforge::plan::Platform) -> String,
    marker: &str,
) -> Vec<archforge::registry::PlatformImage> {
    let mut images = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let platform: archforge::plan::Platform = p.parse().unwrap();
        let digest = registry
            .push_synthetic_image(
                &reference(&platform),
                &platform,
                archforge::api::MediaType::Oci,
                marker,
            )
            .await
            .unwrap();
        images.push(archforge::registry::PlatformImage { platform, digest });
    }
    images
}
