//! The builder's known fatal log lines: a node or image that cannot run a rootless build
//! says so in words users do not act on ("Operation not permitted"). Each becomes a reason
//! and the setting or node fix to apply. Pure.

/// A known cause of a failed build, and what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// One CamelCase word for status and Events.
    pub reason: &'static str,
    /// The cause and the fix, in one sentence.
    pub fix: &'static str,
}

/// The causes, each with the log fragments (lowercase) that identify it, in the order they
/// are tried: the more specific first (rootlesskit's fork error also says "operation not
/// permitted").
const KNOWN: &[(&[&str], Known)] = &[
    (
        &[
            "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: operation not permitted",
        ],
        Known {
            reason: "SeccompBlocksRootlessKit",
            fix: "the node's seccomp profile does not let rootlesskit create its user namespace: run BuildKit builders under the shipped profile (--buildkit-seccomp-profile, chart builder.buildkitSeccompProfile, installed on the nodes by the chart's nodeProfiles.enabled=true or config/node-profiles)",
        },
    ),
    (
        &["unable to join session keyring"],
        Known {
            reason: "SessionKeyringDenied",
            fix: "the seccomp profile denies keyctl with EPERM, and runc only tolerates ENOSYS there: use the shipped archforge-buildkit seccomp profile (nodeProfiles.enabled=true), which denies the keyring calls with ENOSYS",
        },
    ),
    (
        &["open of uid_map failed", "falling back to single mapping"],
        Known {
            reason: "NewuidmapNotPermitted",
            fix: "the builder image's newuidmap/newgidmap are setuid-root, which cannot map IDs with the capabilities the builder keeps: use a builder image whose newuidmap/newgidmap have file capabilities (cap_setuid=ep, cap_setgid=ep), as quay.io/buildah/stable has",
        },
    ),
    (
        &["unshare(clone_newuser)", "error during unshare"],
        Known {
            reason: "SeccompBlocksUserNamespaces",
            fix: "the container runtime's default seccomp profile refuses unshare(CLONE_NEWUSER) (containerd 1.6 does): run the builder under the shipped localhost profile (--seccomp-profile, chart builder.seccompProfile, installed on the nodes by the chart's nodeProfiles.enabled=true or config/node-profiles)",
        },
    ),
];

/// `/dev/fuse` missing or unusable: fuse-overlayfs cannot mount.
const FUSE: Known = Known {
    reason: "FuseUnavailable",
    fix: "the builder has no usable /dev/fuse: run the fuse device plugin on the build nodes (config/fuse-device-plugin) and check that they offer the fuse resource the builder asks for (--fuse-resource, chart builder.fuseResource)",
};

/// The known cause in a failed builder's log tail, if any.
pub fn known_failure(log: &str) -> Option<Known> {
    let log = log.to_ascii_lowercase();
    if let Some((_, known)) = KNOWN
        .iter()
        .find(|(lines, _)| lines.iter().any(|l| log.contains(l)))
    {
        return Some(*known);
    }
    let fuse = log.lines().any(|l| {
        l.contains("/dev/fuse")
            && (l.contains("permission denied")
                || l.contains("no such file or directory")
                || l.contains("operation not permitted"))
    });
    fuse.then_some(FUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(log: &str) -> Option<&'static str> {
        known_failure(log).map(|k| k.reason)
    }

    #[test]
    fn the_builders_fatal_lines_as_the_real_nodes_printed_them() {
        // rootless buildah under containerd 1.6's RuntimeDefault.
        assert_eq!(
            reason(
                "Error during unshare(CLONE_NEWUSER): Operation not permitted\ntime=\"2026-11-23T10:00:00Z\" level=error msg=\"parsing PID \\\"\\\": strconv.Atoi: parsing \\\"\\\": invalid syntax\""
            ),
            Some("SeccompBlocksUserNamespaces")
        );
        // Debian's setuid-root newuidmap under the builder's capabilities.
        assert_eq!(
            reason(
                "newuidmap: open of uid_map failed: Permission denied\ntime=\"...\" level=warning msg=\"error running newuidmap: exit status 1: newuidmap: open of uid_map failed: Permission denied\"\ntime=\"...\" level=warning msg=\"falling back to single mapping\"\nerror setting supplemental groups list: operation not permitted"
            ),
            Some("NewuidmapNotPermitted")
        );
        assert_eq!(
            reason(
                "fuse: device not found, try 'modprobe fuse' first\nfuse-overlayfs: cannot mount: open /dev/fuse: no such file or directory"
            ),
            Some("FuseUnavailable")
        );
        assert_eq!(
            reason("open /dev/fuse: permission denied"),
            Some("FuseUnavailable")
        );
        assert_eq!(
            reason(
                "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: operation not permitted"
            ),
            Some("SeccompBlocksRootlessKit")
        );
        assert_eq!(
            reason(
                "runc run failed: unable to start container process: error during container init: unable to join session keyring: unable to create session key: operation not permitted"
            ),
            Some("SessionKeyringDenied")
        );
    }

    #[test]
    fn ordinary_build_failures_are_not_guessed_at() {
        assert_eq!(
            reason("Error: building at STEP \"RUN make\": exit status 2"),
            None
        );
        // A Dockerfile that mentions the device is not a node problem.
        assert_eq!(reason("STEP 3/4: RUN ls /dev/fuse\nok"), None);
        assert_eq!(reason(""), None);
    }
}
