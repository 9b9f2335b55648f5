//! The person-readable account of a run, on stderr.

use std::time::Instant;

use crate::plan::Platform;

/// Prints each step with the time since the run started.
#[derive(Clone)]
pub(super) struct Progress {
    started: Instant,
}

impl Progress {
    pub(super) fn start() -> Self {
        Progress {
            started: Instant::now(),
        }
    }

    pub(super) fn say(&self, platform: Option<&Platform>, message: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        match platform {
            Some(p) => eprintln!("[{elapsed:>6.1}s] {:<14} {message}", p.to_string()),
            None => eprintln!("[{elapsed:>6.1}s] {message}"),
        }
    }
}
