//! Why no node qualifies for a platform, in words: what the status message and the Warning
//! Event say. Bounded: a big cluster, a long selector or many taints never make a message
//! longer than an Event note may be.

use std::collections::BTreeMap;

use super::{Nodes, PlatformNodes, Refusal};
use crate::plan::{PlatformPlan, emulation_label};

/// Longest message (the Event API keeps a note to 1 KiB; the report cuts notes to 1000
/// bytes from the front, which would lose the start of a longer one).
const MAX_WHY: usize = 900;
/// Most refusals (and selector entries) a message names; the rest are counted.
const MAX_LISTED: usize = 3;
/// Longest label key or taint key a message quotes.
const MAX_ITEM: usize = 60;
/// Longest label value (or taint value and effect) a message quotes: label values have at
/// most 63 characters, so only a hostile one is cut.
const MAX_VALUE: usize = 80;

/// The nodes looked at for one platform and placement, and why those that do not qualify
/// do not (each node counted once, for the first refusal that applies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    seen: usize,
    refused: BTreeMap<Refusal, usize>,
}

impl Tally {
    pub(super) fn qualified(&mut self) {
        self.seen += 1;
    }

    pub(super) fn refused(&mut self, why: Refusal) {
        self.seen += 1;
        *self.refused.entry(why).or_default() += 1;
    }

    /// `2 arm64 nodes: 1 cordoned, 1 with taint dedicated=arm:NoSchedule`, or `none` when
    /// no node was looked at (`no node has kubernetes.io/arch=arm64`).
    fn text(&self, what: &str, none: &str) -> String {
        if self.seen == 0 {
            return none.to_string();
        }
        let plural = if self.seen == 1 { "" } else { "s" };
        let mut reasons: Vec<String> = self
            .refused
            .iter()
            .take(MAX_LISTED)
            .map(|(refusal, n)| format!("{n} {}", refusal_text(refusal)))
            .collect();
        let rest: usize = self.refused.values().skip(MAX_LISTED).sum();
        if rest > 0 {
            reasons.push(format!("{rest} for other reasons"));
        }
        format!("{} {what} node{plural}: {}", self.seen, reasons.join(", "))
    }
}

fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NotReady => "not Ready".to_string(),
        Refusal::Cordoned => "cordoned".to_string(),
        Refusal::Unselected(label) => format!("without {}", cut_pair(label, '=')),
        Refusal::Taint(taint) => format!("with taint {}", cut_pair(taint, '=')),
    }
}

/// `text` cut to about `max` bytes, its middle left out: a long label key differs from the
/// next in its name, after the prefix.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut head = max / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (max - head - 3);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}...{}", &text[..head], &text[tail..])
}

/// `key<sep>rest` with the key and the rest each cut (a label key cannot hold `=`), or the
/// whole cut without `sep`.
fn cut_pair(text: &str, sep: char) -> String {
    match text.split_once(sep) {
        Some((key, rest)) => format!("{}{sep}{}", cut(key, MAX_ITEM), cut(rest, MAX_VALUE)),
        None => cut(text, MAX_ITEM),
    }
}

fn keep_head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// ` matching spec.nodeSelector {disk: ssd}` (at most [`MAX_LISTED`] entries), or nothing
/// without one.
fn selector_text(selector: &BTreeMap<String, String>) -> String {
    if selector.is_empty() {
        return String::new();
    }
    let mut entries: Vec<String> = selector
        .iter()
        .take(MAX_LISTED)
        .map(|(k, v)| format!("{}: {}", cut(k, MAX_ITEM), cut(v, MAX_VALUE)))
        .collect();
    if selector.len() > MAX_LISTED {
        entries.push(format!("and {} more", selector.len() - MAX_LISTED));
    }
    format!(" matching spec.nodeSelector {{{}}}", entries.join(", "))
}

/// Why `platform` has no qualifying node: natively, and with `emulation` also as an
/// emulation host.
pub(super) fn platform(
    platform: &PlatformPlan,
    seen: &PlatformNodes,
    nodes: &Nodes,
    emulation: bool,
) -> String {
    let arch = &platform.platform.architecture;
    let mut why = format!(
        "no Ready, schedulable {} node{} whose taints spec.tolerations tolerate ({})",
        platform.platform,
        selector_text(&nodes.selector),
        seen.native
            .text(arch, &format!("no node has kubernetes.io/arch={arch}"))
    );
    if emulation {
        why.push_str(&format!(
            ", nor such a node labelled {}=true to emulate it ({})",
            emulation_label(arch),
            seen.emulating.text("labelled", "no node is labelled so")
        ));
    }
    why
}

/// The reasons of several platforms, bounded.
pub(super) fn joined(reasons: impl Iterator<Item = String>) -> String {
    keep_head(&reasons.collect::<Vec<_>>().join("; "), MAX_WHY)
}

/// Why emulation Always finds no one host architecture for every platform: where each
/// platform could build, or why it could nowhere.
pub(super) fn no_one_host(all: &[(&PlatformPlan, PlatformNodes)], nodes: &Nodes) -> String {
    let each = all.iter().map(|(p, seen)| match seen.hosts.is_empty() {
        true => platform(p, seen, nodes, true),
        false => {
            let hosts: Vec<&str> = seen.hosts.iter().map(String::as_str).collect();
            format!(
                "{} can build on {} nodes only",
                p.platform,
                hosts.join(", ")
            )
        }
    });
    let each: Vec<String> = each.collect();
    keep_head(
        &format!(
            "emulation is Always, but no one architecture's nodes can build every platform (natively, or labelled emulation.archforge.dev/<arch>=true for the others): {}",
            each.join("; ")
        ),
        MAX_WHY,
    )
}
