//! A real git smart-HTTP server on loopback: `git http-backend` behind Python's CGI server.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct GitServer {
    pub dir: tempfile::TempDir,
    pub base_url: String,
    child: Child,
}

fn git(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "archforge test")
        .env("GIT_AUTHOR_EMAIL", "test@archforge.dev")
        .env("GIT_COMMITTER_NAME", "archforge test")
        .env("GIT_COMMITTER_EMAIL", "test@archforge.dev")
        .env("GIT_AUTHOR_DATE", "2026-11-23T10:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-11-23T10:00:00Z")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Python's CGI server, with HTTP basic auth checked in front of every request.
const BASIC_AUTH_SERVER: &str = r#"
import base64, http.server, os, sys
expected = "Basic " + base64.b64encode(os.environ["GIT_TEST_CREDENTIALS"].encode()).decode()
class Handler(http.server.CGIHTTPRequestHandler):
    def authorized(self):
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False
    def do_GET(self):
        if self.authorized():
            super().do_GET()
    def do_POST(self):
        if self.authorized():
            super().do_POST()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

impl GitServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that answers 401 to every request without these basic-auth credentials.
    pub fn start_with_basic_auth(username: &str, password: &str) -> Self {
        Self::start_with(Some(format!("{username}:{password}")))
    }

    fn start_with(credentials: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repos = dir.path().join("repos");
        let cgi = dir.path().join("www/cgi-bin");
        std::fs::create_dir_all(&repos).unwrap();
        std::fs::create_dir_all(&cgi).unwrap();
        // The CGI server drops to user nobody, so git must accept repositories it does not own.
        let script = format!(
            "#!/bin/sh\nexport GIT_PROJECT_ROOT='{}'\nexport GIT_HTTP_EXPORT_ALL=1\nexport GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'\nexec git http-backend\n",
            repos.display()
        );
        let script_path = cgi.join("git");
        std::fs::write(&script_path, script).unwrap();
        std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new("python3");
        match &credentials {
            None => server.args([
                "-m",
                "http.server",
                "--cgi",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ]),
            Some(c) => server
                .args(["-c", BASIC_AUTH_SERVER, &port.to_string()])
                .env("GIT_TEST_CREDENTIALS", c),
        };
        let child = server
            .current_dir(dir.path().join("www"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "git server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        GitServer {
            base_url: format!("http://{addr}/cgi-bin/git"),
            dir,
            child,
        }
    }

    /// The bare repository `name` on disk (for SSH, which reaches it by path).
    pub fn bare(&self, name: &str) -> PathBuf {
        self.dir.path().join("repos").join(format!("{name}.git"))
    }

    /// Commits `files` (path, content) on branch `main` of repository `name`, creating it
    /// if needed, and returns (clone URL, commit SHA).
    pub fn commit(&self, name: &str, files: &[(&str, &str)], message: &str) -> (String, String) {
        self.commit_with_links(name, files, &[], message)
    }

    /// [`GitServer::commit`] that also commits symbolic links (path, target).
    pub fn commit_with_links(
        &self,
        name: &str,
        files: &[(&str, &str)],
        links: &[(&str, &str)],
        message: &str,
    ) -> (String, String) {
        let bare = self.bare(name);
        let work = self.dir.path().join("work").join(name);
        if !bare.exists() {
            std::fs::create_dir_all(&bare).unwrap();
            git(&bare, &["init", "-q", "--bare", "-b", "main"]);
            std::fs::create_dir_all(&work).unwrap();
            git(&work, &["init", "-q", "-b", "main"]);
            git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        }
        for (path, content) in files {
            let file = work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        for (path, target) in links {
            let link = work.join(path);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&work, &["push", "-q", "origin", "main"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
        (format!("{}/{name}.git", self.base_url), sha)
    }

    /// Tags the current commit of repository `name`.
    pub fn tag(&self, name: &str, tag: &str) {
        let work = self.dir.path().join("work").join(name);
        git(&work, &["tag", "-a", "-m", tag, tag]);
        git(&work, &["push", "-q", "origin", tag]);
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two HTTP servers: one at `url` that redirects every request to the same path on another
/// host (127.0.0.2), and that other host, which asks for basic auth and records every
/// Authorization header it is sent (the credentials a redirect would steal).
pub struct RedirectTrap {
    /// Base URL of the redirecting server (`http://127.0.0.1:<port>`).
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

const REDIRECT_TRAP_SERVER: &str = r#"
import http.server, sys, threading
redirect_port, trap_port, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
class Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.2:%d%s" % (trap_port, self.path))
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_POST = do_GET
class Trap(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as f:
            f.write("%s %s\n" % (self.path, self.headers.get("Authorization", "-")))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="trap"')
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_POST = do_GET
trap = http.server.ThreadingHTTPServer(("127.0.0.2", trap_port), Trap)
threading.Thread(target=trap.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", redirect_port), Redirect).serve_forever()
"#;

fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedirectTrap {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("authorization.log");
        std::fs::write(&log, "").unwrap();
        let (redirect, trap) = (free_port_on("127.0.0.1"), free_port_on("127.0.0.2"));
        let child = Command::new("python3")
            .args(["-c", REDIRECT_TRAP_SERVER])
            .arg(redirect.to_string())
            .arg(trap.to_string())
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [format!("127.0.0.1:{redirect}"), format!("127.0.0.2:{trap}")] {
            while std::net::TcpStream::connect(&addr).is_err() {
                assert!(Instant::now() < deadline, "redirect trap did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedirectTrap {
            url: format!("http://127.0.0.1:{redirect}"),
            log,
            _dir: dir,
            child,
        }
    }

    /// One line per request the other host got: its path and Authorization header (`-`: none).
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for RedirectTrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
