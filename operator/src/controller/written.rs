//! The status this process last wrote to each ImageBuild: the ImageBuild watch can lag
//! behind the writes, and a reconcile must compare with what was written, not with what
//! the store still shows.

use crate::api::{ImageBuild, ImageBuildStatus};

/// The status this process last wrote to each ImageBuild (by UID), with the
/// resourceVersions that write supersedes: while the store still shows one of them, the
/// written status is the one to compare with.
#[derive(Default)]
pub struct WrittenStatuses(std::sync::Mutex<std::collections::HashMap<String, Written>>);

struct Written {
    /// The version the status was written over and, when that was already an older one
    /// (the ImageBuild watch lagging behind two writes), every version earlier writes were
    /// made over or made: a store showing any of them is behind this write.
    superseded: std::collections::HashSet<String>,
    /// The version the write made; once the store shows it, the store is current.
    made: Option<String>,
    status: ImageBuildStatus,
}

impl WrittenStatuses {
    /// The ImageBuild's status as it stands: the one this process wrote, when `build` is a
    /// version that write supersedes (the watch has not shown the write yet), otherwise
    /// `build`'s own.
    pub fn observed(&self, build: &ImageBuild) -> ImageBuildStatus {
        let own = || build.status.clone().unwrap_or_default();
        let Some(uid) = build.metadata.uid.as_ref() else {
            return own();
        };
        let mut written = self.0.lock().expect("written statuses lock");
        let behind = |w: &Written| {
            build
                .metadata
                .resource_version
                .as_ref()
                .is_some_and(|v| w.superseded.contains(v))
        };
        match written.get(uid) {
            Some(w) if behind(w) => w.status.clone(),
            Some(_) => {
                // The store has caught up (or someone else changed the object).
                written.remove(uid);
                own()
            }
            None => own(),
        }
    }

    /// Remembers that `status` was written over `build` (as reconciled), making version
    /// `made`.
    pub fn wrote(&self, build: &ImageBuild, made: Option<String>, status: ImageBuildStatus) {
        let Some(uid) = build.metadata.uid.clone() else {
            return;
        };
        let over = build.metadata.resource_version.clone();
        let mut written = self.0.lock().expect("written statuses lock");
        // Written over a version an earlier write superseded: the store still lags, and
        // shows next the version that earlier write made, which this one supersedes too.
        let mut superseded = match written.remove(&uid) {
            Some(w) if over.as_ref().is_some_and(|v| w.superseded.contains(v)) => {
                let mut earlier = w.superseded;
                earlier.extend(w.made);
                earlier
            }
            _ => Default::default(),
        };
        // A write that changed nothing leaves the version as it was (`made` is `over`): the
        // store's status is then the written one, and either compares alike.
        superseded.extend(over);
        written.insert(
            uid,
            Written {
                superseded,
                made,
                status,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ImageBuild `app` at resourceVersion `version`, with `phase` in status.
    fn at_version(version: &str, phase: &str) -> ImageBuild {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "namespace": "ns", "generation": 1,
                         "uid": "uid-app", "resourceVersion": version},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/arm64"],
                     "output": {"image": "r.example.com/a:v1"}},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn phase_of(status: &ImageBuildStatus) -> Option<crate::api::Phase> {
        status.phase
    }

    #[test]
    fn a_store_two_writes_behind_still_compares_with_the_last_write() {
        use crate::api::Phase;
        let written = WrittenStatuses::default();
        let status = |phase| at_version("0", phase).status.unwrap();
        // Written over version 1, making 2; the store still shows 1.
        written.wrote(
            &at_version("1", "Pending"),
            Some("2".into()),
            status("Building"),
        );
        assert_eq!(
            phase_of(&written.observed(&at_version("1", "Pending"))),
            Some(Phase::Building)
        );
        // Written over 1 again (the watch lags), making 3; the store then shows 2, which is
        // older than the last write: its Assembling run must not be assembled again.
        written.wrote(
            &at_version("1", "Pending"),
            Some("3".into()),
            status("Succeeded"),
        );
        assert_eq!(
            phase_of(&written.observed(&at_version("2", "Building"))),
            Some(Phase::Succeeded)
        );
        // The store shows the last write: its own status, and the memory is gone.
        assert_eq!(
            phase_of(&written.observed(&at_version("3", "Succeeded"))),
            Some(Phase::Succeeded)
        );
        assert_eq!(
            phase_of(&written.observed(&at_version("2", "Building"))),
            Some(Phase::Building),
            "a version shown after the store caught up is someone else's doing"
        );
    }

    #[test]
    fn a_version_written_by_someone_else_is_the_store_s_own() {
        use crate::api::Phase;
        let written = WrittenStatuses::default();
        let status = |phase| at_version("0", phase).status.unwrap();
        written.wrote(
            &at_version("1", "Pending"),
            Some("2".into()),
            status("Building"),
        );
        // A user's edit after this write: not a version this write supersedes.
        assert_eq!(
            phase_of(&written.observed(&at_version("4", "Failed"))),
            Some(Phase::Failed)
        );
        assert_eq!(
            phase_of(&written.observed(&at_version("1", "Pending"))),
            Some(Phase::Pending)
        );
        // A write that changed nothing made no new version: the store is current already.
        written.wrote(
            &at_version("5", "Building"),
            Some("5".into()),
            status("Building"),
        );
        assert_eq!(
            phase_of(&written.observed(&at_version("5", "Building"))),
            Some(Phase::Building)
        );
    }
}
