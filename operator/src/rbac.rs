//! Every Kubernetes permission the operator needs, with the reason. The Helm chart's and
//! kustomize base's RBAC are checked against this list (a missing or extra rule fails the
//! build), and the reconcile tests check that each request the controller makes is covered.

/// Where a permission must be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// In every namespace whose ImageBuilds are watched: a ClusterRole by default, a Role in
    /// each namespace when the operator watches a fixed list of them.
    Watched,
    /// Cluster-scoped resources: always a ClusterRole.
    Cluster,
    /// The operator's own namespace, only when leader election is on.
    LeaderElection,
}

/// One RBAC rule: `verbs` on `resource` (with subresource, as `jobs` or
/// `imagebuilds/status`) of API `group` ("" is the core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub scope: Scope,
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// One line for the RBAC rule's comment.
    pub why: &'static str,
}

pub const PERMISSIONS: &[Permission] = &[
    Permission {
        scope: Scope::Watched,
        group: "archforge.dev",
        resource: "imagebuilds",
        verbs: &["list", "watch"],
        why: "the controller's watch on ImageBuilds",
    },
    Permission {
        scope: Scope::Watched,
        group: "archforge.dev",
        resource: "imagebuilds/status",
        verbs: &["patch"],
        why: "status is written with server-side apply",
    },
    Permission {
        scope: Scope::Watched,
        group: "archforge.dev",
        resource: "imagebuilds/finalizers",
        verbs: &["update"],
        why: "Jobs carry a blocking owner reference to their ImageBuild (OwnerReferencesPermissionEnforcement checks this)",
    },
    Permission {
        scope: Scope::Watched,
        group: "batch",
        resource: "jobs",
        verbs: &["get", "list", "watch", "create", "delete"],
        why: "one builder Job per platform, created (never applied over an existing object, so a Job of the same name that is not this ImageBuild's is left alone), read back by name when the name is taken, deleted when a run fails or is superseded",
    },
    Permission {
        scope: Scope::Watched,
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "read-only: builder pods' termination messages carry the pushed digest or the log tail",
    },
    Permission {
        scope: Scope::Watched,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        why: "read-only, by name: the push secret for index assembly and the git credentials for pinning the commit",
    },
    Permission {
        scope: Scope::Watched,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on ImageBuilds; repeats are patched into a series",
    },
    Permission {
        scope: Scope::Cluster,
        group: "",
        resource: "nodes",
        verbs: &["list"],
        why: "read-only placement check: is there a schedulable node of each requested architecture",
    },
    Permission {
        scope: Scope::LeaderElection,
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "leader election when more than one replica runs",
    },
];

/// The permission a request needs, as (group, resource with subresource, verb), from its
/// HTTP method and path; `None` for paths that are not resource requests.
pub fn required_permission(
    method: &str,
    path: &str,
    query: &str,
) -> Option<(String, String, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watching = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// Whether `PERMISSIONS` grants (group, resource, verb).
pub fn is_granted(group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS
        .iter()
        .any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_requests_to_permissions() {
        for (method, path, query, expected) in [
            ("GET", "/api/v1/nodes", "", ("", "nodes", "list")),
            (
                "GET",
                "/apis/batch/v1/jobs",
                "watch=true&labelSelector=x",
                ("batch", "jobs", "watch"),
            ),
            (
                "PATCH",
                "/apis/archforge.dev/v1alpha1/namespaces/a/imagebuilds/b/status",
                "",
                ("archforge.dev", "imagebuilds/status", "patch"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/secrets/push",
                "",
                ("", "secrets", "get"),
            ),
            (
                "DELETE",
                "/apis/batch/v1/namespaces/a/jobs",
                "",
                ("batch", "jobs", "deletecollection"),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                "",
                ("coordination.k8s.io", "leases", "update"),
            ),
        ] {
            let (group, resource, verb) = expected;
            assert_eq!(
                required_permission(method, path, query),
                Some((group.to_string(), resource.to_string(), verb.to_string())),
                "{method} {path}"
            );
        }
        assert_eq!(required_permission("GET", "/version", ""), None);
    }

    #[test]
    fn no_wildcards_and_no_duplicate_rules() {
        let mut seen = std::collections::HashSet::new();
        for p in PERMISSIONS {
            assert!(
                !p.verbs.contains(&"*") && p.resource != "*" && p.group != "*",
                "{p:?}"
            );
            assert!(seen.insert((p.scope, p.group, p.resource)), "{p:?} twice");
            assert!(!p.why.is_empty());
        }
        assert!(is_granted("batch", "jobs", "create"));
        assert!(
            !is_granted("batch", "jobs", "patch"),
            "Jobs are created, never patched"
        );
        assert!(!is_granted("batch", "jobs", "update"));
        assert!(!is_granted("", "secrets", "list"));
    }
}
