//! Which builder Jobs and pods a scenario or the simulated kubelet means, as a type: the
//! label selector is written here once instead of being formatted in every scenario.

use std::fmt;

use archforge::render::{LABEL_GENERATION, LABEL_IMAGEBUILD, LABEL_PLATFORM};
use kube::api::ListParams;

/// The builder Jobs of an ImageBuild, one platform and one generation, or their pods (a Job's
/// pods carry its labels); a field left `None` matches any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFilter {
    pub imagebuild: Option<String>,
    /// `os/arch[/variant]`, as in the spec.
    pub platform: Option<String>,
    pub generation: Option<i64>,
}

impl JobFilter {
    /// Every builder Job and pod.
    pub fn any() -> JobFilter {
        JobFilter::default()
    }

    /// The builder Jobs and pods of ImageBuild `name`, of every run and platform.
    pub fn of(name: &str) -> JobFilter {
        JobFilter {
            imagebuild: Some(name.to_string()),
            ..JobFilter::default()
        }
    }

    /// Only those of `platform` (`os/arch[/variant]`).
    pub fn platform(self, platform: &str) -> JobFilter {
        JobFilter {
            platform: Some(platform.to_string()),
            ..self
        }
    }

    /// Only those of the run for `generation`.
    pub fn generation(self, generation: i64) -> JobFilter {
        JobFilter {
            generation: Some(generation),
            ..self
        }
    }

    /// The label selector the API server filters by: the platform as its label value
    /// (`linux-arm64`, as `Platform::slug` writes it).
    pub fn label_selector(&self) -> String {
        let mut terms = Vec::new();
        if let Some(name) = &self.imagebuild {
            terms.push(format!("{LABEL_IMAGEBUILD}={name}"));
        }
        if let Some(platform) = &self.platform {
            terms.push(format!("{LABEL_PLATFORM}={}", platform.replace('/', "-")));
        }
        if let Some(generation) = self.generation {
            terms.push(format!("{LABEL_GENERATION}={generation}"));
        }
        terms.join(",")
    }

    /// The list parameters that select these Jobs or pods.
    pub fn list_params(&self) -> ListParams {
        let selector = self.label_selector();
        if selector.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(&selector)
        }
    }

    /// Whether a builder of `imagebuild`, `platform` (`os/arch[/variant]`) and `generation`
    /// (`None` when its label is missing or unreadable) is one of these.
    pub fn matches(&self, imagebuild: &str, platform: &str, generation: Option<i64>) -> bool {
        self.imagebuild.as_deref().is_none_or(|b| b == imagebuild)
            && self.platform.as_deref().is_none_or(|p| p == platform)
            && self.generation.is_none_or(|g| Some(g) == generation)
    }
}

impl fmt::Display for JobFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.imagebuild {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "any ImageBuild")?,
        }
        if let Some(platform) = &self.platform {
            write!(f, ", platform {platform}")?;
        }
        if let Some(generation) = self.generation {
            write!(f, ", generation {generation}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use archforge::plan::Platform;
    use archforge::render::run_labels;

    use super::*;

    #[test]
    fn selects_by_the_labels_the_operator_renders() {
        let filter = JobFilter::of("app").platform("linux/arm/v7").generation(3);
        assert_eq!(
            filter.label_selector(),
            "archforge.dev/imagebuild=app,archforge.dev/platform=linux-arm-v7,archforge.dev/generation=3"
        );
        let mut labels = run_labels("app", 3);
        let platform: Platform = "linux/arm/v7".parse().unwrap();
        labels.insert(LABEL_PLATFORM.to_string(), platform.slug());
        for term in filter.label_selector().split(',') {
            let (key, value) = term.split_once('=').unwrap();
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{term}");
        }
        assert_eq!(
            filter.list_params().label_selector.as_deref(),
            Some(filter.label_selector().as_str())
        );
    }

    #[test]
    fn an_open_filter_selects_everything() {
        assert_eq!(
            JobFilter::of("app").label_selector(),
            "archforge.dev/imagebuild=app"
        );
        assert_eq!(JobFilter::any().label_selector(), "");
        assert_eq!(JobFilter::any().list_params().label_selector, None);
        assert!(JobFilter::any().matches("app", "linux/amd64", None));
        assert_eq!(
            JobFilter::any().generation(1).label_selector(),
            "archforge.dev/generation=1"
        );
    }

    #[test]
    fn matches_field_by_field() {
        let filter = JobFilter::of("app").platform("linux/arm64").generation(2);
        assert!(filter.matches("app", "linux/arm64", Some(2)));
        assert!(!filter.matches("other", "linux/arm64", Some(2)));
        assert!(!filter.matches("app", "linux/amd64", Some(2)));
        assert!(!filter.matches("app", "linux/arm64", Some(1)));
        assert!(!filter.matches("app", "linux/arm64", None));
        assert!(JobFilter::of("app").matches("app", "linux/amd64", None));
    }

    #[test]
    fn says_what_it_selects() {
        assert_eq!(JobFilter::of("app").to_string(), "app");
        assert_eq!(
            JobFilter::of("app")
                .platform("linux/amd64")
                .generation(1)
                .to_string(),
            "app, platform linux/amd64, generation 1"
        );
        assert_eq!(JobFilter::any().to_string(), "any ImageBuild");
    }
}
