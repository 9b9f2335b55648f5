//! Which waiting runs may start now, under the operator's concurrency limits, in a fair order
//! across namespaces. Pure: no client, no clock; the controller feeds it from its stores.
//!
//! The order is round-robin over namespaces: the namespace with the fewest runs going picks
//! next, ties going to the one that started a run least recently (from its Jobs' creation
//! times, so a restarted operator keeps the order), then by name. Within a namespace, the
//! oldest run first (by its start time, then its name).
//!
//! A run that does not fit waits, and reserves what it waits for: no later run that needs
//! the same architecture or namespace (or, at the total limit, any later run) starts before
//! it. A run larger than a limit starts alone when nothing else holds that limit.

pub mod limits;
pub mod seen;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use limits::{Limits, parse_per_arch};

/// One builder Job as the stores show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenJob {
    /// The namespace of its ImageBuild.
    pub namespace: String,
    /// The name of its ImageBuild.
    pub build: String,
    /// The ImageBuild generation its run builds.
    pub generation: Option<i64>,
    /// The architecture of the node it runs on (the emulating host's under emulation).
    pub arch: String,
    /// Whether it has not finished.
    pub running: bool,
    /// When it was created.
    pub created: Option<jiff::Timestamp>,
}

/// A run that wants to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub namespace: String,
    pub name: String,
    /// The ImageBuild generation the run builds.
    pub generation: Option<i64>,
    /// When the run began (status.startTime).
    pub since: Option<jiff::Timestamp>,
    /// The node architecture of each Job it would create.
    pub arches: Vec<String>,
}

impl Waiting {
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// What a queued run waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitsFor {
    Total(u32),
    Arch(String, u32),
    Namespace(String, u32),
}

/// A run that may not start yet: its place in the queue and what it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// 1 for the next to start.
    pub position: usize,
    pub of: usize,
    pub waits_for: WaitsFor,
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

impl Queued {
    /// What the status says, e.g. "3rd of 7 queued; waiting for a running arm64 build to
    /// finish (limit 4)". The same for the same queue, so the status is not rewritten.
    pub fn message(&self) -> String {
        let what = match &self.waits_for {
            WaitsFor::Total(n) => format!("a running build to finish (limit {n} at once)"),
            WaitsFor::Arch(arch, n) => format!("a running {arch} build to finish (limit {n})"),
            WaitsFor::Namespace(ns, n) => {
                format!("a running build of namespace {ns} to finish (limit {n} per namespace)")
            }
        };
        format!(
            "{} of {} queued; waiting for {what}",
            ordinal(self.position),
            self.of
        )
    }
}

/// Which waiting runs start now and where the others stand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// (namespace, name) of the runs that may start, in order.
    pub start: Vec<(String, String)>,
    pub queued: BTreeMap<(String, String), Queued>,
}

impl Decision {
    /// How many runs wait in each namespace.
    pub fn lengths(&self) -> BTreeMap<String, usize> {
        let mut lengths = BTreeMap::new();
        for (ns, _) in self.queued.keys() {
            *lengths.entry(ns.clone()).or_default() += 1;
        }
        lengths
    }
}

/// When a namespace last started a run, for the round-robin's ties: never before a time,
/// a time before a pick made in this decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Last {
    Never,
    At(jiff::Timestamp),
    Picked(usize),
}

/// The waiting runs in the order they may start (see the module's comment).
pub fn fair_order<'a>(jobs: &[SeenJob], waiting: &'a [Waiting]) -> Vec<&'a Waiting> {
    let mut queues: BTreeMap<&str, Vec<&Waiting>> = BTreeMap::new();
    for w in waiting {
        queues.entry(&w.namespace).or_default().push(w);
    }
    for queue in queues.values_mut() {
        // Oldest last, to pop from the end; a run with no start time after those with one.
        queue.sort_by(|a, b| {
            let key = |w: &Waiting| (w.since.is_none(), w.since, w.name.clone());
            key(b).cmp(&key(a))
        });
    }
    let running: HashSet<(&str, &str)> = jobs
        .iter()
        .filter(|j| j.running)
        .map(|j| (j.namespace.as_str(), j.build.as_str()))
        .collect();
    let mut going: HashMap<&str, usize> = HashMap::new();
    for (ns, _) in &running {
        *going.entry(ns).or_default() += 1;
    }
    let mut last: HashMap<&str, Last> = HashMap::new();
    for j in jobs {
        let at = j.created.map_or(Last::Never, Last::At);
        let entry = last.entry(j.namespace.as_str()).or_insert(Last::Never);
        *entry = (*entry).max(at);
    }
    let mut order = Vec::with_capacity(waiting.len());
    while let Some(ns) = next_namespace(&queues, &going, &last) {
        let run = queues
            .get_mut(ns)
            .and_then(Vec::pop)
            .expect("a non-empty queue");
        order.push(run);
        *going.entry(ns).or_default() += 1;
        last.insert(ns, Last::Picked(order.len()));
    }
    order
}

/// The namespace with waiting runs that picks next.
fn next_namespace<'a>(
    queues: &BTreeMap<&'a str, Vec<&Waiting>>,
    going: &HashMap<&str, usize>,
    last: &HashMap<&str, Last>,
) -> Option<&'a str> {
    queues
        .iter()
        .filter(|(_, q)| !q.is_empty())
        .map(|(ns, _)| *ns)
        .min_by_key(|ns| {
            let going = going.get(ns).copied().unwrap_or_default();
            (going, last.get(ns).copied().unwrap_or(Last::Never), *ns)
        })
}

/// The running Jobs counted against each limit, and what earlier queued runs reserve.
#[derive(Default)]
struct Counts<'a> {
    total: u32,
    arch: HashMap<&'a str, u32>,
    namespace: HashMap<&'a str, u32>,
    all_reserved: Option<WaitsFor>,
    arch_reserved: HashMap<&'a str, WaitsFor>,
    namespace_reserved: HashMap<&'a str, WaitsFor>,
}

/// Whether `need` more fit under `limit` with `have` going; more than the limit fits when
/// nothing holds it.
fn fits(have: u32, need: u32, limit: Option<u32>) -> bool {
    limit.is_none_or(|limit| have == 0 || have + need <= limit)
}

impl<'a> Counts<'a> {
    fn of(jobs: &'a [SeenJob]) -> Counts<'a> {
        let mut counts = Counts::default();
        for j in jobs.iter().filter(|j| j.running) {
            counts.add(&j.namespace, std::iter::once(j.arch.as_str()));
        }
        counts
    }

    fn add(&mut self, namespace: &'a str, arches: impl Iterator<Item = &'a str>) {
        for arch in arches {
            self.total += 1;
            *self.arch.entry(arch).or_default() += 1;
            *self.namespace.entry(namespace).or_default() += 1;
        }
    }

    /// What keeps `run` from starting now, if anything.
    fn blocker(&self, limits: &Limits, run: &'a Waiting) -> Option<WaitsFor> {
        if let Some(w) = &self.all_reserved {
            return Some(w.clone());
        }
        let need = run.arches.len() as u32;
        if !fits(self.total, need, limits.total_limit()) {
            return Some(WaitsFor::Total(limits.total));
        }
        let mut per_arch: BTreeMap<&str, u32> = BTreeMap::new();
        for arch in &run.arches {
            *per_arch.entry(arch).or_default() += 1;
        }
        for (arch, need) in per_arch {
            if let Some(w) = self.arch_reserved.get(arch) {
                return Some(w.clone());
            }
            let limit = limits.arch_limit(arch);
            let have = self.arch.get(arch).copied().unwrap_or_default();
            if let (false, Some(n)) = (fits(have, need, limit), limit) {
                return Some(WaitsFor::Arch(arch.to_string(), n));
            }
        }
        let ns = run.namespace.as_str();
        if let Some(w) = self.namespace_reserved.get(ns) {
            return Some(w.clone());
        }
        let limit = limits.namespace_limit(ns);
        let have = self.namespace.get(ns).copied().unwrap_or_default();
        match (fits(have, need, limit), limit) {
            (false, Some(n)) => Some(WaitsFor::Namespace(ns.to_string(), n)),
            _ => None,
        }
    }

    /// `run` waits for `what`: later runs needing the same do not pass it.
    fn reserve(&mut self, run: &'a Waiting, what: &WaitsFor) {
        match what {
            WaitsFor::Total(_) => self.all_reserved = Some(what.clone()),
            WaitsFor::Arch(arch, _) => {
                // The run's own spelling of the architecture, to borrow for the map's key.
                if let Some(arch) = run.arches.iter().find(|a| *a == arch) {
                    self.arch_reserved
                        .entry(arch)
                        .or_insert_with(|| what.clone());
                }
            }
            WaitsFor::Namespace(_, _) => {
                self.namespace_reserved
                    .entry(&run.namespace)
                    .or_insert_with(|| what.clone());
            }
        }
    }
}

/// Decides which of `waiting` start now, given the builder Jobs the stores show (running
/// or finished; finished ones only order the namespaces) and the limits.
pub fn decide(limits: &Limits, jobs: &[SeenJob], waiting: &[Waiting]) -> Decision {
    let order = fair_order(jobs, waiting);
    let mut counts = Counts::of(jobs);
    let mut decision = Decision::default();
    let mut queued = Vec::new();
    for run in order {
        match counts.blocker(limits, run) {
            None => {
                counts.add(&run.namespace, run.arches.iter().map(String::as_str));
                decision.start.push(run.key());
            }
            Some(what) => {
                counts.reserve(run, &what);
                queued.push((run.key(), what));
            }
        }
    }
    let of = queued.len();
    for (i, (key, waits_for)) in queued.into_iter().enumerate() {
        let place = Queued {
            position: i + 1,
            of,
            waits_for,
        };
        decision.queued.insert(key, place);
    }
    decision
}

#[cfg(test)]
mod tests;
