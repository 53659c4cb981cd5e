//! A real registry (Debian's `docker-registry`, distribution v2) on a free loopback port, with
//! temporary storage, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a registry may take to answer after start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running registry.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Start an open registry.
    pub fn start() -> TestRegistry {
        Self::start_with(None)
    }

    /// Start a registry that requires Basic auth with `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_basic_auth(user: &str, password: &str) -> TestRegistry {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = auth {
            let out = super::run(Command::new("htpasswd").args(["-Bbn", user, password]));
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lamina-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut r = TestRegistry { child: None, addr, dir };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Where the registry's log (with its access log) goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Where blobs are stored.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The data file of a stored blob.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kill the registry at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}); log:\n{}", self.log());
            }
            if http_status(&self.addr, "/v2/").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry on {} not ready in {READY_TIMEOUT:?}; log:\n{}",
            self.addr,
            self.log()
        );
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Blob GETs of `repo` in the access log now, except those naming `except` (e.g. the
    /// config's digest): (requests, bytes sent).
    pub fn blob_gets_now(&self, repo: &str, except: Option<&str>) -> (usize, u64) {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")) && except.is_none_or(|x| !l.contains(x)))
            .collect();
        // `… "GET /v2/… HTTP/1.1" 206 41961 "" "lamina/…"`: the number after the status.
        let bytes = lines
            .iter()
            .filter_map(|l| l.split('"').nth(2)?.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        (lines.len(), bytes)
    }

    /// [`Self::blob_gets_now`] once the log has settled (the registry writes a line after the
    /// response has gone out, so a client can be done before its last line is there).
    pub fn settled_blob_gets(&self, repo: &str, except: Option<&str>) -> (usize, u64) {
        let mut last = self.blob_gets_now(repo, except);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.blob_gets_now(repo, except);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status code of a plain `GET path` on `addr`, if anything answered.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}
