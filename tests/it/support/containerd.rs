//! Debian's containerd with lamina as a proxy snapshotter, both started by the test in a
//! temporary directory (config, root, state, sockets), and a CRI client that pulls images as
//! the kubelet does (`runtime.v1.ImageService/PullImage` over containerd's socket).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{lamina, poll, python, run, KillOnDrop};

/// `lamina snapshotter` on `W/lamina.sock`, root `W/snapshotter`, cache `W/cache`: either
/// socket-activated (the socket held by a supervisor that restarts the service, as systemd's
/// units do) or binding its socket itself.
pub struct Snapshotter {
    /// The supervisor, or the service itself.
    child: Option<KillOnDrop>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its root.
    pub root: PathBuf,
    /// Its cache.
    pub cache: PathBuf,
    activated: bool,
    starts: usize,
    log: PathBuf,
}

impl Snapshotter {
    /// Start it and wait until it serves.
    pub fn start(w: &Path, activated: bool) -> Snapshotter {
        Self::start_with(w, activated, &[])
    }

    /// [`Self::start`] with more arguments (`--config FILE`).
    pub fn start_with(w: &Path, activated: bool, extra: &[&std::ffi::OsStr]) -> Snapshotter {
        let mut s = Snapshotter {
            child: None,
            socket: w.join("lamina.sock"),
            root: w.join("snapshotter"),
            cache: w.join("cache"),
            activated,
            starts: 0,
            log: w.join("snapshotter.log"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .unwrap();
        let mut cmd = if activated {
            let mut c = python();
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/socket_activate.py"))
                .arg(&s.socket)
                .arg(s.pid_file())
                .arg(env!("CARGO_BIN_EXE_lamina"))
                .arg("snapshotter");
            c
        } else {
            let mut c = lamina();
            c.arg("snapshotter").arg("--address").arg(&s.socket);
            c
        };
        cmd.args(extra)
            .arg("--root")
            .arg(&s.root)
            .arg("--cache-dir")
            .arg(&s.cache)
            .env("RUST_LOG", "lamina=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        s.child = Some(KillOnDrop(cmd.spawn().unwrap()));
        s.wait_serving();
        s
    }

    fn pid_file(&self) -> PathBuf {
        self.socket.with_extension("pid")
    }

    /// Wait for the next "serving" line of the log.
    fn wait_serving(&mut self) {
        self.starts += 1;
        poll::until("lamina snapshotter to serve", || {
            if let Some(status) = self.child.as_mut().unwrap().0.try_wait().unwrap() {
                panic!("lamina snapshotter exited ({status}):\n{}", self.log());
            }
            (self.log().matches("lamina snapshotter serving").count() >= self.starts).then_some(())
        });
    }

    /// The service's pid.
    pub fn pid(&self) -> u32 {
        if self.activated {
            std::fs::read_to_string(self.pid_file())
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        } else {
            self.child.as_ref().unwrap().0.id()
        }
    }

    /// Kill the service (SIGKILL): socket-activated, its supervisor starts it again on the
    /// same socket and root; the call returns once it serves.
    pub fn restart(&mut self) {
        assert!(
            self.activated,
            "only a socket-activated service restarts without containerd noticing"
        );
        let pid = self.pid();
        run(Command::new("kill").args(["-KILL", &pid.to_string()]));
        self.wait_serving();
        poll::until("the supervisor to record the new pid", || {
            (self.pid() != pid).then_some(())
        });
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let service = std::fs::read_to_string(self.pid_file()).ok().filter(|_| self.activated);
        self.child = None; // the supervisor first, so that it starts nothing more
        if let Some(pid) = service {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).output();
        }
        // The snapshots' mount daemons outlive a killed service: unmount what it left under
        // its root (each daemon then ends), so test runs do not pile up FUSE mounts.
        unmount_under(&self.root);
    }
}

/// Unmount (lazily) every mount at or under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).output();
    }
}

/// containerd with `[proxy_plugins.lamina]` and the CRI plugin set to use it.
pub struct Containerd {
    /// The daemon.
    pub child: KillOnDrop,
    /// Its gRPC socket (containerd's API and CRI).
    pub socket: PathBuf,
    /// Its root.
    pub root: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Start containerd in `w/containerd`, reaching `registry` over plain HTTP, with the CRI
    /// plugin's snapshotter `snapshotter` (`lamina` through `lamina_socket`, or `overlayfs`).
    pub fn start(w: &Path, registry: &str, snapshotter: &str, lamina_socket: &Path) -> Containerd {
        let dir = w.join(format!("containerd-{snapshotter}"));
        let certs = dir.join("certs.d").join(registry);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(
            certs.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
        let socket = dir.join("containerd.sock");
        let root = dir.join("root");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{socket}.debug"
[proxy_plugins]
  [proxy_plugins.lamina]
    type = "snapshot"
    address = "{lamina}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root = root.display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            lamina = lamina_socket.display(),
            certs = dir.join("certs.d").display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = dir.join("containerd.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child: KillOnDrop(child),
            socket,
            root,
            log,
        };
        poll::until("containerd to serve", || {
            if let Some(status) = c.child.0.try_wait().unwrap() {
                panic!("containerd exited ({status}):\n{}", c.log());
            }
            let out = c.ctr(&["version"]);
            out.status.success().then_some(())
        });
        c
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address SOCKET -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr … ARGS`, which must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\ncontainerd log tail:\n{}\nlamina snapshotter log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20),
            tail(
                &std::fs::read_to_string(self.root.join("../../snapshotter.log")).unwrap_or_default(),
                30
            )
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pull `image` through CRI, as the kubelet does; the image id containerd answers.
    pub fn cri_pull(&self, image: &str) -> Result<String, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(cri::pull(&self.socket, image))
    }

    /// Prepare a container snapshot `key` on `parent` with the lamina snapshotter, and mount
    /// it at `target` exactly as `ctr snapshots mounts` prints the command.
    pub fn prepare_and_mount(&self, key: &str, parent: &str, target: &Path) {
        self.ctr_ok(&["snapshots", "--snapshotter", "lamina", "prepare", key, parent]);
        self.mount(key, target);
    }

    /// Mount the snapshot `key` at `target` as `ctr snapshots mounts` says.
    pub fn mount(&self, key: &str, target: &Path) {
        std::fs::create_dir_all(target).unwrap();
        let command = self.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            "lamina",
            "mounts",
            target.to_str().unwrap(),
            key,
        ]);
        assert!(command.starts_with("mount "), "ctr printed {command:?}");
        run(Command::new("sh").arg("-c").arg(command.trim()));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Mounts containerd made under its root (none today; CRI pulls mount nothing lasting).
        unmount_under(&self.root);
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The chain ID of the whole image whose config is `config` (the OCI image spec's rule).
pub fn top_chain_id(config: &serde_json::Value) -> String {
    use sha2::Digest as _;
    let mut chain = String::new();
    for d in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let d = d.as_str().unwrap();
        chain = if chain.is_empty() {
            d.to_string()
        } else {
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(format!("{chain} {d}").as_bytes()))
            )
        };
    }
    chain
}

/// Lamina mounts (FUSE) under `dir`, from /proc/self/mountinfo.
pub fn fuse_mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| {
            // `… - fuse lamina …` (or `fuse.lamina lamina` where the subtype is kept)
            let after: Vec<&str> = l.split(" - ").nth(1).unwrap_or("").split(' ').collect();
            after.len() > 1 && after[0].starts_with("fuse") && after[1] == "lamina"
        })
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The CRI image service: the two messages of PullImage, as prost messages (field numbers
/// from `k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`).
mod cri {
    use std::path::{Path, PathBuf};

    use lamina_tonic::codec::ProstCodec;
    use lamina_tonic::transport::{Endpoint, Uri};

    use containerd_snapshots::tonic as lamina_tonic;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PullImageRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PullImageResponse {
        #[prost(string, tag = "1")]
        pub image_ref: String,
    }

    pub async fn pull(socket: &Path, image: &str) -> Result<String, String> {
        let socket: PathBuf = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(socket.clone())
            }))
            .await
            .map_err(|e| format!("connecting to containerd: {e}"))?;
        let mut grpc = lamina_tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
            }),
        };
        let path = lamina_tonic::codegen::http::uri::PathAndQuery::from_static("/runtime.v1.ImageService/PullImage");
        let response: lamina_tonic::Response<PullImageResponse> = grpc
            .unary(lamina_tonic::Request::new(request), path, ProstCodec::default())
            .await
            .map_err(|s| format!("PullImage {image}: {} ({:?})", s.message(), s.code()))?;
        Ok(response.into_inner().image_ref)
    }
}
