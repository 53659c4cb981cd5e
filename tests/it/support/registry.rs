//! A real registry (Debian's `docker-registry`, distribution v2) on a free loopback port, with
//! temporary storage, stopped when dropped.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::poll;

/// How long a registry may take to answer after start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running registry.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
    /// The CA of an HTTPS registry's certificate, for the test's own requests to it (curl).
    https_ca: Option<PathBuf>,
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

    /// Start a registry serving HTTPS with `cert` and `key` (PEM), asking clients for a
    /// certificate signed by `client_ca` when given. Ready once it listens (its readiness
    /// and log helpers speak plain HTTP, so they are not for this one).
    pub fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = TestRegistry {
            child: None,
            addr: String::new(),
            dir,
            https_ca: None,
        };
        let (child, port) = start_server("docker-registry (TLS)", |port| {
            r.write_config(port, false);
            let mut tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            if let Some(ca) = client_ca {
                tls.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
            let config = r.dir.path().join("config.yml");
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, format!("{text}{tls}")).unwrap();
            r.command().spawn().expect("start docker-registry")
        });
        r.child = Some(child);
        r.addr = format!("127.0.0.1:{port}");
        r
    }

    /// [`Self::start_tls`] with a certificate of `ca`, which the test's own requests to it
    /// (e.g. [`Self::settled_blob_gets`]) then trust.
    pub fn start_https(cert: &Path, key: &Path, ca: &Path) -> TestRegistry {
        let mut r = Self::start_tls(cert, key, None);
        r.https_ca = Some(ca.to_path_buf());
        r
    }

    /// Start a pull-through cache of the registry at `remote` (`proxy.remoteurl`).
    pub fn start_pull_through(remote: &str) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = TestRegistry {
            child: None,
            addr: String::new(),
            dir,
            https_ca: None,
        };
        let (child, port) = start_server("docker-registry (pull-through cache)", |port| {
            r.write_config(port, false);
            let config = r.dir.path().join("config.yml");
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, format!("{text}proxy:\n  remoteurl: http://{remote}\n")).unwrap();
            r.command().spawn().expect("start docker-registry")
        });
        r.child = Some(child);
        r.addr = format!("127.0.0.1:{port}");
        r.wait_ready();
        r
    }

    fn start_with(auth: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = TestRegistry {
            child: None,
            addr: String::new(),
            dir,
            https_ca: None,
        };
        if let Some((user, password)) = auth {
            let out = super::run(Command::new("htpasswd").args(["-Bbn", user, password]));
            std::fs::write(r.dir.path().join("htpasswd"), out.stdout).unwrap();
        }
        // Another process may take the port between `free_port` and the registry's bind: then
        // the registry exits, and it is started again on another port.
        let (child, port) = start_server("docker-registry", |port| {
            r.write_config(port, auth.is_some());
            r.command().spawn().expect("start docker-registry")
        });
        r.child = Some(child);
        r.addr = format!("127.0.0.1:{port}");
        r.wait_ready();
        r
    }

    fn write_config(&self, port: u16, auth: bool) {
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            self.storage().display()
        );
        if auth {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lamina-test\n    path: {}\n",
                self.dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(self.dir.path().join("config.yml"), config).unwrap();
    }

    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut c = Command::new("docker-registry");
        c.arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        c
    }

    fn spawn(&mut self) {
        let port: u16 = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut child = self.command().spawn().expect("start docker-registry");
        if let Err(status) = wait_listening(&mut child, port) {
            panic!("docker-registry exited ({status}) on restart; log:\n{}", self.log());
        }
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

    /// [`Self::blob_gets_now`] once the log has caught up. The registry writes a request's line
    /// after its response has gone out, so a client can be done before its last line is there:
    /// a request of our own, made now, is answered and logged after those, so its line is
    /// waited for (no quiet period guessed).
    pub fn settled_blob_gets(&self, repo: &str, except: Option<&str>) -> (usize, u64) {
        static SYNCS: AtomicU64 = AtomicU64::new(0);
        let marker = format!(
            "/v2/lamina-test-sync/manifests/s{}",
            SYNCS.fetch_add(1, Ordering::Relaxed)
        );
        let answered = match &self.https_ca {
            None => http_status(&self.addr, &marker).is_some(),
            Some(ca) => Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--cacert"])
                .arg(ca)
                .arg(format!("https://{}{marker}", self.addr))
                .status()
                .is_ok_and(|s| s.success()),
        };
        assert!(answered, "the registry did not answer");
        poll::until("the registry to log our own request", || {
            self.log().contains(&format!("\"GET {marker} ")).then_some(())
        });
        self.blob_gets_now(repo, except)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ports handed out by [`free_port`] in this process: never handed out twice, so two tests
/// running in parallel threads cannot be given the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port nothing listens on right now and that no other test of this process was given.
/// Another process may still take it before the caller binds: start servers with
/// [`start_server`], which retries on a new port.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// How many ports a server is tried on before giving up.
const START_ATTEMPTS: usize = 5;

/// Start a server with `spawn(port)` on a port from [`free_port`] and wait until that very
/// child listens on it; if it exits first (the port was taken meanwhile), try another port.
pub fn start_server(what: &str, mut spawn: impl FnMut(u16) -> Child) -> (Child, u16) {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let mut child = spawn(port);
        match wait_listening(&mut child, port) {
            Ok(()) => return (child, port),
            Err(status) => failures.push(format!("port {port}: exited ({status})")),
        }
    }
    panic!("{what} did not start: {failures:?}");
}

/// Wait until `child` itself has a listening socket on `port` (a socket of another process on
/// the same port does not count); `Err` with its exit status if it exits first.
pub fn wait_listening(child: &mut Child, port: u16) -> Result<(), std::process::ExitStatus> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status);
        }
        if listens_on(child.id(), port) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "pid {} not listening on {port} after {READY_TIMEOUT:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (from /proc/net/tcp and
/// the process's descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let inodes: BTreeSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // State 0A is LISTEN.
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .is_some_and(|i| inodes.contains(i))
            })
        })
    })
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

#[test]
fn ports_are_never_handed_out_twice_even_to_parallel_tests() {
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..50).map(|_| free_port()).collect::<Vec<u16>>()))
        .collect();
    let ports: Vec<u16> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
}
