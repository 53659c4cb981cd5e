//! Oracles of the writable layer: kernel overlayfs over the same layers, the differential
//! driver (`overlay_ops.py`) and the fsx-style writer (`fsx.py`), and their seeds.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{python, run};

/// Kernel overlayfs, unmounted when dropped.
pub struct KernelOverlay {
    /// The mount point.
    pub point: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay` of `lower` under `upper` (work dir `work`) at `point`, with `options`
    /// (empty: the kernel's defaults).
    pub fn mount(lower: &Path, upper: &Path, work: &Path, point: &Path, options: &str) -> KernelOverlay {
        for d in [upper, work, point] {
            std::fs::create_dir_all(d).unwrap();
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}{}{options}",
                lower.display(),
                upper.display(),
                work.display(),
                if options.is_empty() { "" } else { "," }
            ))
            .arg(point));
        KernelOverlay {
            point: point.to_path_buf(),
        }
    }

    /// Kernel overlayfs over a lamina upper directory (`UPPER/upper`, `UPPER/work`), with the
    /// options lamina's format needs to be read alike.
    pub fn over_lamina_upper(lower: &Path, upper: &Path, point: &Path) -> KernelOverlay {
        Self::mount(
            lower,
            &upper.join("upper"),
            &upper.join("work"),
            point,
            "redirect_dir=on,metacopy=on",
        )
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

/// A helper script of tests/it/support, run by python with `args` under a 300 s `timeout` (a
/// hang is a failure too); panics with its output unless it succeeded, else returns stdout.
pub fn run_script(name: &str, args: &[&std::ffi::OsStr], what: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/support")
        .join(name);
    let out = Command::new("timeout")
        .arg("300")
        .arg(python().get_program())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", text.trim());
    text
}

/// Run the differential driver; panics with its report on the first different outcome.
pub fn same_outcomes(seed: u64, count: usize, lamina: &Path, kernel: &Path) {
    let (seed, count) = (seed.to_string(), count.to_string());
    run_script(
        "overlay_ops.py",
        &[seed.as_ref(), count.as_ref(), lamina.as_ref(), kernel.as_ref()],
        "lamina and kernel overlayfs disagree",
    );
}

/// A list of numbers from the environment variable `var` (`a,b,…`), else `default`.
pub fn env_list(var: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// A number from the environment variable `var`, else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
