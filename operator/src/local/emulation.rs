//! Whether a foreign platform can run here, under qemu-user-static.

use std::path::Path;

use super::LocalError;
use crate::plan::PlatformPlan;

/// The `kubernetes.io/arch`-style name of the machine's architecture.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "x86" => "386",
        other => other,
    }
}

/// The binfmt_misc entry qemu-user-static registers for an architecture.
fn qemu_binfmt(architecture: &str) -> &str {
    match architecture {
        "arm64" => "qemu-aarch64",
        "amd64" => "qemu-x86_64",
        "386" => "qemu-i386",
        "ppc64le" => "qemu-ppc64le",
        "s390x" => "qemu-s390x",
        "riscv64" => "qemu-riscv64",
        _ => "qemu-arm",
    }
}

/// Refuses early, with the fix, when a foreign platform cannot run here; otherwise one
/// warning per emulated platform.
pub(super) fn check_emulation(platforms: &[PlatformPlan]) -> Result<Vec<String>, LocalError> {
    let mut warnings = Vec::new();
    for p in platforms {
        let arch = p.platform.architecture.as_str();
        if arch == host_architecture() {
            continue;
        }
        let entry = Path::new("/proc/sys/fs/binfmt_misc").join(qemu_binfmt(arch));
        let enabled = std::fs::read_to_string(&entry)
            .map(|s| s.starts_with("enabled"))
            .unwrap_or(false);
        if !enabled {
            return Err(LocalError::Emulation(format!(
                "{} cannot run on this {} machine: {} is not registered with binfmt_misc. \
                 Install qemu-user-static and binfmt-support, mount binfmt_misc \
                 (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) and run \
                 update-binfmts --enable {}",
                p.platform,
                host_architecture(),
                entry.display(),
                qemu_binfmt(arch)
            )));
        }
        warnings.push(format!(
            "{} is emulated with qemu-user-static on this {} machine: expect it to be several times slower than a native build",
            p.platform,
            host_architecture()
        ));
    }
    Ok(warnings)
}
