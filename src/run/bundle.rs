//! The OCI runtime bundle's `config.json` (runtime-spec 1.0) that starts a [`Spec`] with
//! `crun` or `runc`, built with `oci-spec`'s runtime types: new PID, mount, IPC and UTS
//! namespaces, the host's network, the usual /proc, /dev, /sys mounts, the default
//! capabilities of Docker and Podman, a writable root.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec as RuntimeSpec, SpecBuilder, UserBuilder,
};

use super::Spec;

/// Capabilities of a container process: the default set of Docker and Podman.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container.
const MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths the container may read but not write.
const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Result<Mount, std::io::Error> {
    MountBuilder::default()
        .destination(destination)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(std::io::Error::other)
}

/// The runtime config that starts `spec` in `root`.
pub fn config(spec: &Spec, root: &Path) -> Result<RuntimeSpec, std::io::Error> {
    let err = std::io::Error::other;
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPS.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(err)?;
    let user = UserBuilder::default()
        .uid(spec.uid)
        .gid(spec.gid)
        .additional_gids(spec.groups.clone())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(spec.argv.clone())
        .env(spec.env.clone())
        .cwd(spec.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(err)?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().map_err(err))
    .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()
        .map_err(err)?;
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ];
    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path(root).readonly(false).build().map_err(err)?)
        .hostname(spec.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_carry_the_spec_for_oci_runtimes() {
        let spec = Spec {
            argv: vec!["python3".into(), "-c".into(), "1".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1001,
            groups: vec![2000],
            hostname: "lamina-7".into(),
        };
        let c = serde_json::to_value(config(&spec, Path::new("/var/lib/lamina/run/x")).unwrap()).unwrap();
        assert_eq!(c["process"]["args"], serde_json::json!(["python3", "-c", "1"]));
        assert_eq!(c["process"]["env"], serde_json::json!(["A=1"]));
        assert_eq!(c["process"]["cwd"], "/work");
        assert_eq!(
            c["process"]["user"],
            serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [2000]})
        );
        assert_eq!(c["root"]["path"], "/var/lib/lamina/run/x");
        assert_eq!(c["root"]["readonly"], false);
        assert_eq!(c["hostname"], "lamina-7");
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        assert!(c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/proc"));
    }
}
