//! Whether a foreign platform may and can run here, under qemu-user-static.

use std::path::Path;

use super::LocalError;
use crate::api::Emulation;
use crate::plan::Platform;

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

/// Whether `platform` runs under emulation on this machine.
pub(super) fn is_foreign(platform: &Platform) -> bool {
    !runs_natively(host_architecture(), &platform.architecture)
}

/// Whether a CPU of `host` runs `architecture`'s binaries itself: its own, and 32-bit x86 on
/// x86-64 (arm/v7 on arm64 is left out: not every arm64 CPU has the 32-bit instructions).
fn runs_natively(host: &str, architecture: &str) -> bool {
    host == architecture || (host == "amd64" && architecture == "386")
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

/// The emulation mode of a local run and where it came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mode {
    pub(super) emulation: Emulation,
    pub(super) from: &'static str,
}

impl Mode {
    /// `--emulation` when given, else `spec.emulation`, else Fallback: a workstation has one
    /// architecture, so emulating is the only way to build the others, and a flag typed for
    /// this run is the most specific wish.
    pub(super) fn resolve(flag: Option<Emulation>, spec: Option<Emulation>) -> Mode {
        match (flag, spec) {
            (Some(emulation), _) => Mode {
                emulation,
                from: "--emulation",
            },
            (None, Some(emulation)) => Mode {
                emulation,
                from: "spec.emulation",
            },
            (None, None) => Mode {
                emulation: Emulation::Fallback,
                from: "the local default",
            },
        }
    }
}

/// Refuses early, with the fix, when a foreign platform may not (`Never`) or cannot (no
/// binfmt registration) run here; otherwise one warning per emulated platform. `Always`
/// is `Fallback` here: there is only this one host.
pub(super) fn check_emulation(
    platforms: &[Platform],
    mode: Mode,
) -> Result<Vec<String>, LocalError> {
    let mut warnings = Vec::new();
    for p in platforms.iter().filter(|p| is_foreign(p)) {
        let entry = qemu_binfmt(&p.architecture);
        if mode.emulation == Emulation::Never {
            return Err(LocalError::Emulation(format!(
                "{p} cannot be built natively on this {host} machine and emulation is Never \
                 ({from}). To build it under QEMU, install it (apt-get install qemu-user-static \
                 binfmt-support, then update-binfmts --enable {entry}) and run with \
                 --emulation Fallback, or drop {p} from spec.platforms",
                host = host_architecture(),
                from = mode.from,
            )));
        }
        let path = Path::new("/proc/sys/fs/binfmt_misc").join(entry);
        let enabled = std::fs::read_to_string(&path)
            .map(|s| s.starts_with("enabled"))
            .unwrap_or(false);
        if !enabled {
            return Err(LocalError::Emulation(format!(
                "{p} cannot run on this {} machine: {} is not registered with binfmt_misc. \
                 Install qemu-user-static and binfmt-support (apt-get install qemu-user-static \
                 binfmt-support), mount binfmt_misc \
                 (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) and run \
                 update-binfmts --enable {entry}",
                host_architecture(),
                path.display(),
            )));
        }
        warnings.push(format!(
            "{p} is emulated with qemu-user-static on this {} machine: expect it to be several times slower than a native build",
            host_architecture()
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_runs_32_bit_x86_natively() {
        assert!(runs_natively("amd64", "386"));
        assert!(runs_natively("arm64", "arm64"));
        assert!(!runs_natively("arm64", "arm"));
        assert!(!runs_natively("amd64", "arm64"));
    }

    fn foreign() -> Platform {
        let arch = if host_architecture() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        format!("linux/{arch}").parse().unwrap()
    }

    #[test]
    fn the_flag_beats_the_spec_and_fallback_is_the_default() {
        use Emulation::*;
        assert_eq!(Mode::resolve(Some(Never), Some(Always)).emulation, Never);
        assert_eq!(Mode::resolve(None, Some(Never)).from, "spec.emulation");
        assert_eq!(Mode::resolve(None, None).emulation, Fallback);
    }

    #[test]
    fn never_refuses_a_foreign_platform_with_the_fix() {
        let native: Platform = format!("linux/{}", host_architecture()).parse().unwrap();
        let mode = Mode::resolve(None, Some(Emulation::Never));
        assert_eq!(
            check_emulation(std::slice::from_ref(&native), mode).unwrap(),
            Vec::<String>::new()
        );
        let message = check_emulation(&[native, foreign()], mode)
            .unwrap_err()
            .to_string();
        assert!(message.contains(&foreign().to_string()), "{message}");
        assert!(message.contains("(spec.emulation)"), "{message}");
        assert!(message.contains("--emulation Fallback"), "{message}");
        assert!(
            message.contains("apt-get install qemu-user-static binfmt-support"),
            "{message}"
        );
    }
}
