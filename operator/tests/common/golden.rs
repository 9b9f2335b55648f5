//! Golden files of rendered Jobs in operator/tests/golden/, compared byte for byte and
//! rewritten by `make golden` (ARCHFORGE_UPDATE_GOLDEN=1); review the diff by eye.

use k8s_openapi::api::batch::v1::Job;

/// Jobs as `archforge render` prints them.
pub fn to_yaml(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|j| format!("---\n{}", archforge::manifest::to_yaml("Job", j).unwrap()))
        .collect()
}

/// Compares `actual` with the golden file `name`, or writes it there under `make golden`.
pub fn golden(name: &str, actual: &str) {
    let path = super::repo_root().join("operator/tests/golden").join(name);
    if std::env::var_os("ARCHFORGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; create it with `make golden`",
            path.display()
        )
    });
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} differs; if intended, run `make golden`",
        path.display()
    );
}
