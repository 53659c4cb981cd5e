//! Basic auth (htpasswd on the real registry, credentials from the Docker config file) and the
//! bearer-token flow (a token endpoint in front of the real registry), including refresh.

use std::path::Path;

use base64::Engine as _;

use crate::support::image::{skopeo_push, Umoci};
use crate::support::registry::TestRegistry;
use crate::support::{assert_failed, assert_ok, lamina, require_root, require_tools};

fn small_image(work: &Path) -> Umoci {
    let umoci = Umoci::init(&work.join("layout"), "t");
    let bundle = work.join("bundle");
    umoci.unpack("t", &bundle);
    std::fs::write(bundle.join("rootfs/hello"), b"authenticated").unwrap();
    umoci.repack("t", &bundle);
    umoci
}

fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#);
    std::fs::write(dir.join("config.json"), config).unwrap();
}

fn pull_with_config(image: &str, dest: &Path, config_dir: Option<&Path>) -> std::process::Output {
    let mut c = lamina();
    if let Some(d) = config_dir {
        c.env("DOCKER_CONFIG", d);
    }
    c.arg("pull").arg(image).arg(dest).output().unwrap()
}

#[test]
fn basic_auth_from_docker_config() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "htpasswd"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = small_image(w);
    let image = format!("{}/private:t", registry.addr);
    skopeo_push(&umoci.layout, "t", &image, Some("alice:s3cret"), false);

    let err = assert_failed(&pull_with_config(&image, &w.join("anon"), None));
    assert!(err.contains("401"), "{err}");
    assert!(!w.join("anon").exists());

    docker_config(&w.join("wrong"), &registry.addr, "alice", "nope");
    let err = assert_failed(&pull_with_config(&image, &w.join("wrong-out"), Some(&w.join("wrong"))));
    assert!(err.contains("401") && !err.contains("nope"), "{err}");

    docker_config(&w.join("good"), &registry.addr, "alice", "s3cret");
    let out = pull_with_config(&image, &w.join("out"), Some(&w.join("good")));
    assert_ok(&out);
    assert_eq!(std::fs::read(w.join("out/hello")).unwrap(), b"authenticated");
}

struct TokenProxy {
    _child: crate::support::KillOnDrop,
    addr: String,
    log: std::path::PathBuf,
}

impl TokenProxy {
    fn start(upstream: &str, user: &str, password: &str, uses_per_token: u32, log: &Path) -> TokenProxy {
        let uses = uses_per_token.to_string();
        let (child, addr) = crate::support::start_helper("token_proxy.py", &[upstream, user, password, &uses], log);
        TokenProxy {
            _child: child,
            addr,
            log: log.to_path_buf(),
        }
    }

    fn tokens_issued(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("TOKEN"))
            .count()
    }
}

#[test]
fn bearer_token_flow_with_refresh() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "python3"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = small_image(w);
    skopeo_push(&umoci.layout, "t", &format!("{}/tokened:t", registry.addr), None, false);
    // Each token is good for two requests: a pull needs several, so lamina must refresh.
    let proxy = TokenProxy::start(&registry.addr, "bob", "hunter2", 2, &w.join("proxy.log"));
    let image = format!("{}/tokened:t", proxy.addr);

    let err = assert_failed(&pull_with_config(&image, &w.join("anon"), None));
    assert!(err.contains("token endpoint") && err.contains("401"), "{err}");

    docker_config(&w.join("cfg"), &proxy.addr, "bob", "hunter2");
    let before = proxy.tokens_issued();
    let out = pull_with_config(&image, &w.join("out"), Some(&w.join("cfg")));
    assert_ok(&out);
    assert_eq!(std::fs::read(w.join("out/hello")).unwrap(), b"authenticated");
    let issued = proxy.tokens_issued() - before;
    assert!(issued >= 2, "expected token refreshes, {issued} token(s) issued");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.contains("scope=repository%3Atokened%3Apull"), "{log}");
}

#[test]
fn an_identity_token_is_exchanged_with_the_refresh_token_grant() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "python3"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = small_image(w);
    skopeo_push(
        &umoci.layout,
        "t",
        &format!("{}/identity:t", registry.addr),
        None,
        false,
    );
    // The token endpoint takes the refresh-token grant with this identity token, and no
    // Basic credentials at all.
    let proxy = TokenProxy::start(&registry.addr, "nobody", "identity-secret", 2, &w.join("proxy.log"));
    let image = format!("{}/identity:t", proxy.addr);
    let config = w.join("docker");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"identitytoken\": \"identity-secret\"}}}}}}",
            proxy.addr
        ),
    )
    .unwrap();
    assert_ok(&pull_with_config(&image, &w.join("pulled"), Some(&config)));
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(proxy.tokens_issued() > 1, "tokens were refreshed:\n{log}");
    assert!(
        log.lines()
            .filter(|l| l.starts_with("TOKEN"))
            .all(|l| l.contains("via=refresh")),
        "{log}"
    );
    // A wrong identity token: refused, and the error says by whom.
    std::fs::write(
        config.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"identitytoken\": \"wrong\"}}}}}}",
            proxy.addr
        ),
    )
    .unwrap();
    let err = assert_failed(&pull_with_config(&image, &w.join("refused"), Some(&config)));
    assert!(err.contains("token endpoint"), "{err}");
}
