//! Test fixtures: tool checks, a real registry, images built by real tools and by hand, and
//! the tree oracle.

pub mod containerd;
pub mod image;
pub mod layers;
pub mod layout;
pub mod mount;
pub mod overlay;
pub mod poll;
pub mod registry;
pub mod tls;
pub mod tree;

use std::path::Path;
use std::process::{Command, Output};

/// Whether we run under CI, where a missing tool is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Check that every tool is on PATH. Missing: fail under CI, otherwise print why and return false.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing tools {missing:?} (install with scripts/setup.sh)");
    if in_ci() {
        panic!("{msg}; CI=true makes this a failure");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Check that we run as root (owners, device nodes). Not root: fail under CI, else skip.
pub fn require_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let msg = "this test needs root (owners, device nodes, umoci unpack without --rootless)";
    if in_ci() {
        panic!("{msg}; CI=true makes this a failure");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Run a command; panic with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The Python for the test helpers: Debian's (scripts/setup.sh installs it), whose pid is the
/// interpreter's own — a version-manager shim in PATH may fork, and killing the shim would
/// leave the helper running.
pub fn python() -> Command {
    if Path::new("/usr/bin/python3").exists() {
        Command::new("/usr/bin/python3")
    } else {
        Command::new("python3")
    }
}

/// A child process killed when dropped (also when a test fails).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A helper script of `tests/it/support` started as an HTTP server: `SCRIPT PORT ARGS…` on a
/// port of its own, stdout to `log`. Returns it (killed when dropped) and its address, once it
/// answers HTTP.
pub fn start_helper(script: &str, args: &[&str], log: &Path) -> (KillOnDrop, String) {
    let (child, port) = registry::start_server(script, |port| helper_command(script, port, args, log).spawn().unwrap());
    (answering(child, port, script), format!("127.0.0.1:{port}"))
}

/// [`start_helper`] again on the port it had (e.g. after it was killed to break connections).
pub fn restart_helper(script: &str, port: u16, args: &[&str], log: &Path) -> KillOnDrop {
    let mut child = helper_command(script, port, args, log).spawn().unwrap();
    if let Err(status) = registry::wait_listening(&mut child, port) {
        panic!("{script} exited ({status}) when started again on port {port}");
    }
    answering(child, port, script)
}

fn helper_command(script: &str, port: u16, args: &[&str], log: &Path) -> Command {
    let mut c = python();
    c.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/it/support")
            .join(script),
    )
    .arg(port.to_string())
    .args(args)
    .stdout(std::process::Stdio::from(std::fs::File::create(log).unwrap()));
    c
}

fn answering(child: std::process::Child, port: u16, script: &str) -> KillOnDrop {
    let child = KillOnDrop(child);
    let addr = format!("127.0.0.1:{port}");
    poll::until(&format!("{script} answering on {addr}"), || {
        registry::http_status(&addr, "/v2/").map(drop)
    });
    child
}

/// The lamina binary under test.
pub fn lamina() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lamina"));
    c.arg("--quiet");
    // Isolate from the developer's own Docker credentials and lamina config.
    c.env("DOCKER_CONFIG", "/nonexistent-lamina-test-docker-config");
    c.env("XDG_CONFIG_HOME", "/nonexistent-lamina-test-config");
    c
}

/// `lamina pull IMAGE DIR` (extra args first); returns the output, whatever the status.
pub fn lamina_pull(image: &str, dir: &Path, extra: &[&str]) -> Output {
    let mut c = lamina();
    c.arg("pull").args(extra).arg(image).arg(dir);
    c.output().expect("run lamina")
}

/// Panic unless the command succeeded.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "lamina failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panic unless the command failed; return its stderr.
pub fn assert_failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "lamina succeeded but should have failed:\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The names in a directory (empty if it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
