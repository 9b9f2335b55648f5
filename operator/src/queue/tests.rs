use super::*;

fn at(minute: i64) -> Option<jiff::Timestamp> {
    Some(jiff::Timestamp::from_second(1_800_000_000 + minute * 60).unwrap())
}

fn run(ns: &str, name: &str, minute: i64, arches: &[&str]) -> Waiting {
    Waiting {
        namespace: ns.into(),
        name: name.into(),
        generation: Some(1),
        since: at(minute),
        arches: arches.iter().map(|a| a.to_string()).collect(),
    }
}

fn job(ns: &str, build: &str, arch: &str, running: bool, minute: i64) -> SeenJob {
    SeenJob {
        namespace: ns.into(),
        build: build.into(),
        generation: Some(1),
        arch: arch.into(),
        running,
        created: at(minute),
    }
}

fn total(n: u32) -> Limits {
    Limits {
        total: n,
        ..Limits::default()
    }
}

fn names(keys: &[(String, String)]) -> Vec<String> {
    keys.iter().map(|(ns, n)| format!("{ns}/{n}")).collect()
}

/// Starts what the decision allows, as the controller would: Jobs created at `minute`.
fn start(jobs: &mut Vec<SeenJob>, waiting: &mut Vec<Waiting>, d: &Decision, minute: i64) {
    for key in &d.start {
        let i = waiting.iter().position(|w| w.key() == *key).unwrap();
        let w = waiting.remove(i);
        for arch in &w.arches {
            jobs.push(job(&w.namespace, &w.name, arch, true, minute));
        }
    }
}

fn finish(jobs: &mut [SeenJob], ns: &str, build: &str) {
    jobs.iter_mut()
        .filter(|j| j.namespace == ns && j.build == build)
        .for_each(|j| j.running = false);
}

#[test]
fn with_a_limit_of_n_the_next_run_is_queued_and_starts_when_one_finishes() {
    let limits = total(3);
    let mut waiting: Vec<Waiting> = (0..4)
        .map(|i| run("ns", &format!("b{i}"), i, &["amd64"]))
        .collect();
    let mut jobs = Vec::new();
    let d = decide(&limits, &jobs, &waiting);
    assert_eq!(names(&d.start), ["ns/b0", "ns/b1", "ns/b2"]);
    let queued = &d.queued[&("ns".to_string(), "b3".to_string())];
    assert_eq!(
        queued.message(),
        "1st of 1 queued; waiting for a running build to finish (limit 3 at once)"
    );
    start(&mut jobs, &mut waiting, &d, 10);
    // Nothing finished: the same decision, the same message.
    let again = decide(&limits, &jobs, &waiting);
    assert!(again.start.is_empty());
    assert_eq!(again.queued, d.queued);
    finish(&mut jobs, "ns", "b1");
    assert_eq!(names(&decide(&limits, &jobs, &waiting).start), ["ns/b3"]);
}

#[test]
fn two_namespaces_with_fifty_queued_each_alternate() {
    let limits = total(1);
    // Team a applied all of its fifty before team b applied any.
    let mut waiting: Vec<Waiting> = (0..50)
        .map(|i| run("a", &format!("a{i:02}"), i, &["amd64"]))
        .chain((0..50).map(|i| run("b", &format!("b{i:02}"), 100 + i, &["amd64"])))
        .collect();
    let mut jobs = Vec::new();
    let mut started = Vec::new();
    for minute in 200..300 {
        let d = decide(&limits, &jobs, &waiting);
        assert_eq!(d.start.len(), 1, "one slot, one start");
        assert_eq!(d.queued.len(), waiting.len() - 1);
        started.push(d.start[0].clone());
        start(&mut jobs, &mut waiting, &d, minute);
        let (ns, build) = &d.start[0];
        finish(&mut jobs, ns, build);
    }
    let namespaces: Vec<&str> = started.iter().map(|(ns, _)| ns.as_str()).collect();
    let alternating: Vec<&str> = (0..100).map(|i| ["a", "b"][i % 2]).collect();
    assert_eq!(namespaces, alternating);
    // Within a namespace, oldest first.
    let a: Vec<&str> = started
        .iter()
        .filter(|(ns, _)| ns == "a")
        .map(|(_, n)| n.as_str())
        .collect();
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(a, sorted);
}

#[test]
fn positions_interleave_namespaces() {
    let waiting = [
        run("a", "a1", 1, &["amd64"]),
        run("a", "a2", 2, &["amd64"]),
        run("a", "a3", 3, &["amd64"]),
        run("b", "b1", 4, &["amd64"]),
    ];
    let jobs = [job("x", "x0", "amd64", true, 0)];
    let d = decide(&total(1), &jobs, &waiting);
    let position = |ns: &str, n: &str| d.queued[&(ns.to_string(), n.to_string())].position;
    assert_eq!(
        [
            position("a", "a1"),
            position("b", "b1"),
            position("a", "a2"),
            position("a", "a3")
        ],
        [1, 2, 3, 4]
    );
    assert_eq!(d.lengths()["a"], 3);
}

#[test]
fn an_emulated_build_counts_against_its_host_architecture() {
    let limits = Limits {
        per_arch: parse_per_arch("amd64=1").unwrap(),
        ..Limits::default()
    };
    // An arm64 Job emulated on an amd64 node, as the store shows it.
    let emulated: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "e-1-linux-arm64", "namespace": "ns", "annotations": {
            "archforge.dev/imagebuild": "e", "archforge.dev/platform": "linux/arm64",
            "archforge.dev/emulated-on": "amd64"},
            "ownerReferences": [{"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                                 "name": "e", "uid": "u", "controller": true}]}
    }))
    .unwrap();
    let jobs = [seen::seen_job(&emulated, None).unwrap()];
    assert_eq!(jobs[0].arch, "amd64");
    let waiting = [
        run("ns", "x86", 1, &["amd64"]),
        run("ns", "arm", 2, &["arm64"]),
    ];
    let d = decide(&limits, &jobs, &waiting);
    assert_eq!(names(&d.start), ["ns/arm"]);
    assert_eq!(
        d.queued[&("ns".to_string(), "x86".to_string())].message(),
        "1st of 1 queued; waiting for a running amd64 build to finish (limit 1)"
    );
}

#[test]
fn a_queued_run_reserves_its_architecture_but_not_others() {
    let limits = Limits {
        per_arch: parse_per_arch("arm64=1").unwrap(),
        ..Limits::default()
    };
    let jobs = [job("a", "a0", "arm64", true, 0)];
    // b1 waits for arm64; b2 (arm64 too) may not pass it, b3 (amd64) may.
    let waiting = [
        run("b", "b1", 1, &["arm64", "amd64"]),
        run("c", "c2", 2, &["arm64"]),
        run("d", "d3", 3, &["amd64"]),
    ];
    let d = decide(&limits, &jobs, &waiting);
    assert_eq!(names(&d.start), ["d/d3"]);
    assert_eq!(d.queued.len(), 2);
}

#[test]
fn a_run_larger_than_a_limit_starts_alone() {
    let waiting = [run("ns", "big", 1, &["amd64", "arm64", "s390x"])];
    assert_eq!(names(&decide(&total(2), &[], &waiting).start), ["ns/big"]);
    let jobs = [job("ns", "other", "amd64", true, 0)];
    assert!(decide(&total(2), &jobs, &waiting).start.is_empty());
}

#[test]
fn the_namespace_limit_holds_one_namespace_and_not_another() {
    let limits = Limits {
        per_namespace: 1,
        ..Limits::default()
    };
    let jobs = [job("a", "a0", "amd64", true, 0)];
    let waiting = [run("a", "a1", 1, &["amd64"]), run("b", "b1", 2, &["amd64"])];
    let d = decide(&limits, &jobs, &waiting);
    assert_eq!(names(&d.start), ["b/b1"]);
    assert!(
        d.queued[&("a".to_string(), "a1".to_string())]
            .message()
            .ends_with(
                "waiting for a running build of namespace a to finish (limit 1 per namespace)"
            )
    );
}

fn queued_build(ns: &str, name: &str, minute: i64) -> crate::api::ImageBuild {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64"], "output": {"image": "r.example.com/a:v1"}},
        "status": {"phase": "Queued", "observedGeneration": 1,
                   "startTime": at(minute).unwrap().to_string()}
    }))
    .unwrap()
}

#[test]
fn after_a_restart_the_queue_is_rebuilt_from_the_stores_and_nothing_starts_twice() {
    let limits = total(1);
    // q0 was admitted and its Job created, but the operator stopped before its status said
    // so: the ImageBuild store still shows it Queued.
    let builds = [
        queued_build("a", "q0", 0),
        queued_build("a", "q1", 1),
        queued_build("b", "q2", 2),
    ];
    let jobs = [job("a", "q0", "amd64", true, 5)];
    let waiting = seen::queued_runs(&builds, &jobs);
    assert_eq!(
        waiting.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["q1", "q2"]
    );
    let d = decide(&limits, &jobs, &waiting);
    assert!(d.start.is_empty(), "q0 holds the only slot");
    assert_eq!(d.queued.len(), 2, "nothing lost");
    // q0 finishes: b's q2 goes next (a started a run more recently), then a's q1.
    let mut jobs = jobs.to_vec();
    finish(&mut jobs, "a", "q0");
    let d = decide(&limits, &jobs, &seen::queued_runs(&builds, &jobs));
    assert_eq!(names(&d.start), ["b/q2"]);
}

#[test]
fn without_limits_everything_starts() {
    let waiting: Vec<Waiting> = (0..20)
        .map(|i| run("ns", &format!("b{i}"), i, &["amd64"]))
        .collect();
    let d = decide(&Limits::default(), &[], &waiting);
    assert_eq!(d.start.len(), 20);
    assert!(d.queued.is_empty());
}

#[test]
fn ordinals_read_as_english() {
    let ord: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 103].map(ordinal).to_vec();
    assert_eq!(
        ord,
        [
            "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "103rd"
        ]
    );
}

/// A tenant's Job that copies a builder Job's labels and annotations, naming another
/// namespace's ImageBuild, charges no one (hostile review: it queued the victim's builds).
#[test]
fn a_forged_job_charges_no_other_namespace() {
    let forged = |namespace: &str, owned: bool| -> k8s_openapi::api::batch::v1::Job {
        let mut job = serde_json::json!({"metadata": {"name": "x-1-linux-amd64", "namespace": namespace,
            "labels": {"archforge.dev/imagebuild-namespace": "victim",
                       "archforge.dev/imagebuild-uid": "u"},
            "annotations": {"archforge.dev/imagebuild": "app", "archforge.dev/platform": "linux/amd64",
                            "archforge.dev/imagebuild-namespace": "victim"}}});
        if owned {
            job["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "archforge.dev/v1alpha1",
                "kind": "ImageBuild", "name": "mine", "uid": "m", "controller": true}]);
        }
        serde_json::from_value(job).unwrap()
    };
    // Isolated: only the build namespace's Jobs count.
    assert!(seen::seen_job(&forged("evil", true), Some("builds")).is_none());
    let real = seen::seen_job(&forged("builds", false), Some("builds")).unwrap();
    assert_eq!(real.namespace, "victim");
    // In-namespace: a Job no ImageBuild controls is not counted, and an owned one counts
    // against its own namespace only, whatever its labels say.
    assert!(seen::seen_job(&forged("evil", false), None).is_none());
    let own = seen::seen_job(&forged("evil", true), None).unwrap();
    assert_eq!(own.namespace, "evil");
}
