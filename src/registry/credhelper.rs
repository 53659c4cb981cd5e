//! Docker credential helpers: `docker-credential-NAME get`, the registry's server URL on
//! stdin, `{"ServerURL":…,"Username":…,"Secret":…}` on stdout (docker-credential-helpers'
//! protocol). Bounded in time and output; a failure names the helper, never the secret.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::auth::Credentials;
use super::error::{RegistryError, Result};

/// How long a helper may take.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most output read from a helper.
const MAX_OUTPUT: u64 = 64 * 1024;

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// What docker hands a helper for `registry`: Docker Hub's historical URL, else the host.
fn server_url(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/".to_string(),
        r => r.to_string(),
    }
}

/// Ask helper `name` for `registry`'s credentials: `None` when it has none.
pub fn get(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let fail = |reason: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server_url(registry).as_bytes());
    }
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let _ = (&mut out).take(MAX_OUTPUT).read_to_end(&mut o);
        let mut e = Vec::new();
        let _ = (&mut err).take(MAX_OUTPUT).read_to_end(&mut e);
        (o, e)
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {HELPER_TIMEOUT:?}; killed")));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    let said = String::from_utf8_lossy(&stderr).trim().to_string();
    let said_out = String::from_utf8_lossy(&stdout).trim().to_string();
    if !status.success() {
        // The protocol's answer for "nothing stored for this server".
        if said_out.contains("credentials not found") || said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "exited with {status}: {}",
            said.chars().take(200).collect::<String>()
        )));
    }
    let answer: Answer =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("answer is not the helper protocol's JSON: {e}")))?;
    if answer.username == Credentials::IDENTITY_TOKEN_USER {
        return Ok(Some(Credentials::identity_token(answer.secret)));
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_gets_its_historical_url() {
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_url("reg.lan:5000"), "reg.lan:5000");
    }

    #[test]
    fn a_missing_helper_is_a_clear_error() {
        let e = get("lamina-test-no-such-helper", "x").unwrap_err().to_string();
        assert!(e.contains("docker-credential-lamina-test-no-such-helper"), "{e}");
    }
}
