//! Every Kubernetes permission the operator needs, with the reason. `archforge rbac` prints
//! RBAC objects from this list, the Helm chart's rules are generated from it (and the
//! kustomize base from the chart) by `make manifests`, and the reconcile tests check that
//! each request the controller makes is covered.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Where a permission must be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// In every namespace whose ImageBuilds are watched: a ClusterRole by default, a Role in
    /// each namespace when the operator watches a fixed list of them.
    Watched,
    /// Where the runs' Jobs and builder pods live: with the watched ImageBuilds (in the same
    /// roles), or, with an isolated build namespace, a Role in that namespace only.
    Builds,
    /// Only with an isolated build namespace, a Role there: the runs' per-run Secret copies.
    BuildSecrets,
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
        verbs: &["list", "watch", "patch"],
        why: "the controller's watch on ImageBuilds; patch adds and removes the build-cleanup finalizer (isolated build namespace only)",
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
        group: "",
        resource: "secrets",
        verbs: &["get"],
        why: "read-only, by name, in the ImageBuild's own namespace: the push secret for index assembly, the git credentials for pinning the commit, and the Secrets copied per run into an isolated build namespace",
    },
    Permission {
        scope: Scope::Watched,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events on ImageBuilds; repeats are patched into a series",
    },
    Permission {
        scope: Scope::Builds,
        group: "batch",
        resource: "jobs",
        verbs: &[
            "get",
            "list",
            "watch",
            "create",
            "delete",
            "deletecollection",
        ],
        why: "one builder Job per platform, created (never applied over an existing object, so a Job of the same name that is not this ImageBuild's is left alone), read back by name when the name is taken, deleted when a run fails or is superseded, and by label when its ImageBuild is deleted (isolated build namespace)",
    },
    Permission {
        scope: Scope::Builds,
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "read-only: builder pods' termination messages carry the pushed digest or the log tail",
    },
    Permission {
        scope: Scope::Builds,
        group: "",
        resource: "events",
        verbs: &["list", "watch"],
        why: "read-only, narrowed by field selectors to the Job controller's FailedCreate on Jobs and the kubelet's FailedMount on pods: why a builder pod was never created or cannot mount its Secret, which no status says",
    },
    Permission {
        scope: Scope::BuildSecrets,
        group: "",
        resource: "secrets",
        verbs: &["create", "deletecollection"],
        why: "per-run copies of an ImageBuild's Secrets, owned by the run's Job, in the isolated build namespace only; deleted by label with their ImageBuild",
    },
    Permission {
        scope: Scope::Cluster,
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
        why: "read-only placement check, from a watched store: is there a schedulable node of each requested architecture",
    },
    Permission {
        scope: Scope::Cluster,
        group: "archforge.dev",
        resource: "buildpolicies",
        verbs: &["list", "watch"],
        why: "read-only, from a watched store: the platform team's BuildPolicies every ImageBuild is checked against before any Job",
    },
    Permission {
        scope: Scope::Cluster,
        group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        why: "read-only, from a watched store trimmed to names and labels: which BuildPolicies select an ImageBuild's namespace",
    },
    Permission {
        scope: Scope::LeaderElection,
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "leader election when more than one replica runs",
    },
];

impl Scope {
    /// Every scope, in the order the RBAC objects are written.
    pub const ALL: [Scope; 5] = [
        Scope::Watched,
        Scope::Builds,
        Scope::BuildSecrets,
        Scope::Cluster,
        Scope::LeaderElection,
    ];
}

impl Permission {
    /// The RBAC rule granting this permission.
    pub fn rule(&self) -> PolicyRule {
        PolicyRule {
            api_groups: Some(vec![self.group.to_string()]),
            resources: Some(vec![self.resource.to_string()]),
            verbs: self.verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// The permissions of one scope, in `PERMISSIONS` order.
pub fn permissions(scope: Scope) -> impl Iterator<Item = &'static Permission> {
    PERMISSIONS.iter().filter(move |p| p.scope == scope)
}

/// Where the operator's RBAC applies and whom it is bound to: the arguments of
/// `archforge rbac`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// The name of the ClusterRole or Roles of the watched namespaces; the other roles add
    /// `-nodes` and `-leader-election` to it (as the Helm chart names them).
    pub name: String,
    /// The operator's ServiceAccount.
    pub service_account: String,
    /// The namespace of the operator's ServiceAccount.
    pub service_account_namespace: String,
    /// The watched namespaces, each getting a Role; empty for a ClusterRole covering all.
    pub watched_namespaces: Vec<String>,
    /// The namespace of the leader election Lease; `None` without leader election.
    pub leader_election_namespace: Option<String>,
    /// The isolated build namespace, whose Role (`<name>-builds`) alone may create Jobs and
    /// Secrets; `None` when each ImageBuild builds in its own namespace.
    pub build_namespace: Option<String>,
}

/// One role or binding of the operator's RBAC.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum RbacObject {
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
}

impl RbacObject {
    /// The kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RbacObject::ClusterRole(_) => "ClusterRole",
            RbacObject::ClusterRoleBinding(_) => "ClusterRoleBinding",
            RbacObject::Role(_) => "Role",
            RbacObject::RoleBinding(_) => "RoleBinding",
        }
    }
}

/// A role and its binding, with the scopes whose permissions the role grants.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub scopes: Vec<Scope>,
    pub role: RbacObject,
    pub binding: RbacObject,
}

/// The roles and bindings `install` needs: the watched namespaces' (one ClusterRole, or a
/// Role per namespace), the nodes' ClusterRole, and the Lease's Role with leader election.
pub fn grants(install: &Install) -> Vec<Grant> {
    let subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: install.service_account.clone(),
        namespace: Some(install.service_account_namespace.clone()),
        ..Default::default()
    }]);
    let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    };
    let rules = |scopes: &[Scope]| {
        let all = scopes.iter().flat_map(|s| permissions(*s));
        Some(all.map(Permission::rule).collect())
    };
    let cluster_wide = |scopes: Vec<Scope>, name: String| Grant {
        role: RbacObject::ClusterRole(ClusterRole {
            metadata: meta(&name, None),
            rules: rules(&scopes),
            ..Default::default()
        }),
        binding: RbacObject::ClusterRoleBinding(ClusterRoleBinding {
            metadata: meta(&name, None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name,
            },
            subjects: subjects.clone(),
        }),
        scopes,
    };
    let namespaced = |scopes: Vec<Scope>, name: String, namespace: &str| Grant {
        role: RbacObject::Role(Role {
            metadata: meta(&name, Some(namespace)),
            rules: rules(&scopes),
        }),
        binding: RbacObject::RoleBinding(RoleBinding {
            metadata: meta(&name, Some(namespace)),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name,
            },
            subjects: subjects.clone(),
        }),
        scopes,
    };
    let watched = match install.build_namespace {
        Some(_) => vec![Scope::Watched],
        None => vec![Scope::Watched, Scope::Builds],
    };
    let mut grants = Vec::new();
    if install.watched_namespaces.is_empty() {
        grants.push(cluster_wide(watched.clone(), install.name.clone()));
    }
    for namespace in &install.watched_namespaces {
        grants.push(namespaced(watched.clone(), install.name.clone(), namespace));
    }
    if let Some(namespace) = &install.build_namespace {
        let scopes = vec![Scope::Builds, Scope::BuildSecrets];
        grants.push(namespaced(
            scopes,
            format!("{}-builds", install.name),
            namespace,
        ));
    }
    grants.push(cluster_wide(
        vec![Scope::Cluster],
        format!("{}-nodes", install.name),
    ));
    if let Some(namespace) = &install.leader_election_namespace {
        grants.push(namespaced(
            vec![Scope::LeaderElection],
            format!("{}-leader-election", install.name),
            namespace,
        ));
    }
    grants
}

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
            // `archforge rbac` writes it as one comment line.
            assert!(!p.why.contains('\n'), "{p:?}");
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
