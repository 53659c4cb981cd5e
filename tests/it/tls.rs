//! Registries over HTTPS with a private CA made by the test (openssl): pulls and mounts
//! through `certs.d`, refused without the CA, a client certificate required and given; and a
//! credential helper named in `credHelpers` supplying a registry's password.

use std::process::Command;

use crate::support::layers::{base_layer, build_image, Step};
use crate::support::mount::require_fuse;
use crate::support::registry::TestRegistry;
use crate::support::tls::{certs_dir, make_pki, skopeo_push_tls};
use crate::support::tree::assert_same_pulled_tree;
use crate::support::{assert_failed, assert_ok, lamina, require_root, require_tools, run};

#[test]
fn https_registries_with_a_private_ca_and_client_certificates() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "openssl"]) || !require_root() || !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let pki = make_pki(&w.join("pki"));
    let umoci = build_image(w, &[Step::Repack(base_layer)]);

    // 1. Server certificate from the private CA.
    let registry = TestRegistry::start_tls(&pki.server_cert, &pki.server_key, None);
    let image = format!("{}/tls:t", registry.addr);
    skopeo_push_tls(&umoci.layout, &image, &pki, false, w);
    let with_ca = certs_dir(w, "certs-ca", &registry.addr, &pki, true, false);
    let out = lamina()
        .env("LAMINA_CERTS_DIRS", &with_ca)
        .args(["pull", &image])
        .arg(w.join("pulled"))
        .output()
        .unwrap();
    assert_ok(&out);
    assert_same_pulled_tree(&w.join("pulled"), &w.join("oracle/rootfs"));
    // Lazily too (the image is plain gzip: the mount streams it over the same TLS).
    let cache = w.join("cache");
    std::fs::create_dir_all(w.join("mnt")).unwrap();
    let m = {
        let out = lamina()
            .env("LAMINA_CERTS_DIRS", &with_ca)
            .args(["mount", "--cache-dir"])
            .arg(&cache)
            .arg(&image)
            .arg(w.join("mnt"))
            .output()
            .unwrap();
        assert_ok(&out);
        w.join("mnt")
    };
    assert_eq!(
        std::fs::read(m.join("usr/lib/libx.so.1")).unwrap(),
        std::fs::read(w.join("oracle/rootfs/usr/lib/libx.so.1")).unwrap()
    );
    let _ = lamina().arg("umount").arg(&m).output();

    // 2. A certs.d directory without the CA: HTTPS with the system's roots, refused.
    let without = certs_dir(w, "certs-none", &registry.addr, &pki, false, false);
    let out = lamina()
        .env("LAMINA_CERTS_DIRS", &without)
        .args(["pull", &image])
        .arg(w.join("refused"))
        .output()
        .unwrap();
    let err = assert_failed(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A CA file that is not one: an error naming it.
    let broken = certs_dir(w, "certs-broken", &registry.addr, &pki, false, false);
    std::fs::write(broken.join(&registry.addr).join("ca.crt"), b"garbage").unwrap();
    let out = lamina()
        .env("LAMINA_CERTS_DIRS", &broken)
        .args(["pull", &image])
        .arg(w.join("broken"))
        .output()
        .unwrap();
    let err = assert_failed(&out);
    assert!(err.contains("ca.crt"), "{err}");
    drop(registry);

    // 3. A registry that requires a client certificate: refused with the CA alone, served
    //    with the client certificate.
    let registry = TestRegistry::start_tls(&pki.server_cert, &pki.server_key, Some(&pki.ca));
    let image = format!("{}/mtls:t", registry.addr);
    skopeo_push_tls(&umoci.layout, &image, &pki, true, w);
    let ca_only = certs_dir(w, "certs-ca-2", &registry.addr, &pki, true, false);
    let out = lamina()
        .env("LAMINA_CERTS_DIRS", &ca_only)
        .args(["pull", &image])
        .arg(w.join("no-client"))
        .output()
        .unwrap();
    assert_failed(&out);
    let with_client = certs_dir(w, "certs-client", &registry.addr, &pki, true, true);
    let out = lamina()
        .env("LAMINA_CERTS_DIRS", &with_client)
        .args(["pull", &image])
        .arg(w.join("client"))
        .output()
        .unwrap();
    assert_ok(&out);
    assert_same_pulled_tree(&w.join("client"), &w.join("oracle/rootfs"));
}

#[test]
fn a_credential_helper_named_in_cred_helpers_supplies_the_password() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "htpasswd"]) || !require_root() {
        return;
    }
    let registry = TestRegistry::start_with_basic_auth("helper-user", "helper-secret");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let umoci = build_image(w, &[Step::Repack(base_layer)]);
    let image = format!("{}/helped:t", registry.addr);
    crate::support::image::skopeo_push(&umoci.layout, "t", &image, Some("helper-user:helper-secret"), false);

    // A helper on PATH that answers for this registry only, and logs what it was asked.
    let bin = w.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-lamina-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {log}\nif [ \"$server\" = \"{addr}\" ]; then\n  echo '{{\"ServerURL\":\"{addr}\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            log = w.join("helper.log").display(),
            addr = registry.addr
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&helper));
    let docker = w.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!("{{\"credHelpers\": {{\"{}\": \"lamina-test\"}}}}", registry.addr),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = lamina()
        .env("DOCKER_CONFIG", &docker)
        .env("PATH", &path)
        .env_remove("REGISTRY_AUTH_FILE")
        .env("XDG_RUNTIME_DIR", w.join("no-runtime-dir"))
        .args(["pull", &image])
        .arg(w.join("pulled"))
        .output()
        .unwrap();
    assert_ok(&out);
    assert_same_pulled_tree(&w.join("pulled"), &w.join("oracle/rootfs"));
    assert_eq!(
        std::fs::read_to_string(w.join("helper.log")).unwrap().trim(),
        registry.addr
    );
    // Without the helper on PATH: an error naming it.
    let out = lamina()
        .env("DOCKER_CONFIG", &docker)
        .env("PATH", "/usr/bin:/bin")
        .args(["pull", &image])
        .arg(w.join("no-helper"))
        .output()
        .unwrap();
    let err = assert_failed(&out);
    assert!(err.contains("docker-credential-lamina-test"), "{err}");
}
