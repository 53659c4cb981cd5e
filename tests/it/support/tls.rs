//! TLS for the registry tests: a CA, server and client certificates made by openssl,
//! `certs.d` directories as lamina (and skopeo) read them, and pushes over HTTPS.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
pub struct Pki {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM), for 127.0.0.1.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (PEM).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// Make the CA and the certificates in `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=lamina test CA",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "lamina test client")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "",
            "-days",
            "2",
        ];
        let (csr, crt) = (format!("{name}.csr"), format!("{name}.pem"));
        args[3] = &csr;
        args[10] = &crt;
        // Extensions make them X.509 v3 certificates, the only version rustls accepts.
        args.extend(["-extfile", if name == "server" { "san.ext" } else { "client.ext" }]);
        openssl(dir, &args);
    }
    Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// `certs.d/<addr>/` with the CA (and the client certificate when `client`).
pub fn certs_dir(w: &Path, name: &str, addr: &str, pki: &Pki, ca: bool, client: bool) -> PathBuf {
    let root = w.join(name);
    let d = root.join(addr);
    std::fs::create_dir_all(&d).unwrap();
    if ca {
        std::fs::copy(&pki.ca, d.join("ca.crt")).unwrap();
    }
    if client {
        std::fs::copy(&pki.client_cert, d.join("client.cert")).unwrap();
        std::fs::copy(&pki.client_key, d.join("client.key")).unwrap();
    }
    root
}

/// skopeo's certificate directory: the CA, and the client certificate when `client`.
pub fn skopeo_push_tls(layout: &Path, dest: &str, pki: &Pki, client: bool, w: &Path) {
    let d = w.join(if client { "skopeo-client" } else { "skopeo" });
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(&pki.ca, d.join("ca.crt")).unwrap();
    if client {
        std::fs::copy(&pki.client_cert, d.join("client.cert")).unwrap();
        std::fs::copy(&pki.client_key, d.join("client.key")).unwrap();
    }
    run(Command::new("skopeo")
        .args(["copy", "--dest-cert-dir"])
        .arg(&d)
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{dest}")));
}
