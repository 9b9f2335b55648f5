//! Reading and writing Kubernetes objects as YAML files.

use kube::CustomResourceExt;
use serde::Serialize;

use crate::api::ImageBuild;
use crate::rbac::{self, Install, Permission, Scope};
use crate::{Error, Result};

/// Reads one ImageBuild from a YAML (or JSON) file.
pub fn read_imagebuild(path: &str) -> Result<ImageBuild> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_string(),
        source,
    })?;
    parse_imagebuild(path, &text)
}

/// Parses the one ImageBuild of a file, checking that it really is one. The file may hold
/// other objects too (the Secrets a sample needs, say) in further YAML documents.
pub fn parse_imagebuild(path: &str, text: &str) -> Result<ImageBuild> {
    let parse_error = |message: String| Error::ParseManifest {
        path: path.to_string(),
        message,
    };
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| parse_error(yaml_error(text, &e)))?;
    let is_imagebuild =
        |v: &serde_json::Value| v.get("kind").and_then(|k| k.as_str()) == Some("ImageBuild");
    let value = match documents.iter().filter(|v| is_imagebuild(v)).count() {
        0 if documents.len() == 1 => documents.into_iter().next().expect("one document"),
        0 => {
            return Err(parse_error(format!(
                "none of its {} documents is an ImageBuild",
                documents.len()
            )));
        }
        1 => documents
            .into_iter()
            .find(is_imagebuild)
            .expect("one ImageBuild"),
        n => {
            return Err(parse_error(format!(
                "it holds {n} ImageBuilds; give one per file"
            )));
        }
    };
    let api_version = value.get("apiVersion").and_then(|v| v.as_str());
    let kind = value.get("kind").and_then(|v| v.as_str());
    if api_version != Some("archforge.dev/v1alpha1") || kind != Some("ImageBuild") {
        return Err(parse_error(format!(
            "expected apiVersion archforge.dev/v1alpha1 and kind ImageBuild, found {} {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        )));
    }
    // The path says which field the error is about; the value itself is left out.
    serde_path_to_error::deserialize(value).map_err(|e| {
        parse_error(format!(
            "{}: {}",
            e.path(),
            without_value(&e.inner().to_string())
        ))
    })
}

/// Where the YAML of `text` is broken, and nothing of what is there: serde_saphyr's own
/// message quotes the offending line, and in a file that carries the Secrets an ImageBuild
/// needs that line may be a password (`password: "unclosed`).
fn yaml_error(text: &str, error: &serde_saphyr::Error) -> String {
    const UNSHOWN: &str = "the file's text is not shown, as it may hold Secrets";
    match error.location() {
        Some(at) if at.line() > 0 => format!(
            "invalid YAML at line {} column {} (in its YAML document {}); {UNSHOWN}",
            at.line(),
            at.column(),
            document_at(text, at.line())
        ),
        _ => format!("invalid YAML; {UNSHOWN}"),
    }
}

/// The 1-based number of the YAML document (`---`-separated) holding 1-based `line`.
fn document_at(text: &str, line: u64) -> usize {
    let is_marker = |l: &str| l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
    let before: Vec<&str> = text
        .lines()
        .take(usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX))
        .collect();
    let markers = before.iter().filter(|l| is_marker(l)).count();
    // A stream that opens with `---` has no document before its first marker.
    let opens_with_marker = text
        .lines()
        .map(str::trim_end)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(is_marker);
    if opens_with_marker {
        markers.max(1)
    } else {
        markers + 1
    }
}

/// serde's message about a field without the value it found: "invalid type: string
/// \"hunter2\", expected a sequence" becomes "invalid type: found a string, expected a
/// sequence". Messages of a shape serde does not standardise are dropped whole.
fn without_value(message: &str) -> String {
    for kind in ["invalid type", "invalid value"] {
        if let Some(rest) = message.strip_prefix(&format!("{kind}: "))
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            // "string \"x\"", "integer `5`", "map": the kind of value, before the value.
            let found = found.split(['`', '"']).next().unwrap_or_default().trim();
            return format!("{kind}: found a {found}, expected {expected}");
        }
    }
    if message.starts_with("unknown variant ") {
        return match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("unknown variant, expected {expected}"),
            None => "unknown variant".to_string(),
        };
    }
    // Field names and counts only: the keys of an ImageBuild are not secret.
    let keeps = [
        "missing field `",
        "unknown field `",
        "duplicate field `",
        "invalid length ",
    ];
    if keeps.iter().any(|k| message.starts_with(k)) {
        return message.to_string();
    }
    "not a valid value here (the value is not shown)".to_string()
}

/// One object as a YAML document.
pub fn to_yaml<T: Serialize>(what: &'static str, object: &T) -> Result<String> {
    serde_saphyr::to_string(object).map_err(|e| Error::Serialize {
        what,
        message: e.to_string(),
    })
}

/// The CRD, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    to_yaml("CustomResourceDefinition", &ImageBuild::crd()).expect("the CRD serializes")
}

/// The BuildPolicy CRD, exactly as committed under `crds/`.
pub fn policy_crd_yaml() -> String {
    to_yaml("CustomResourceDefinition", &crate::api::BuildPolicy::crd())
        .expect("the CRD serializes")
}

/// The operator's RBAC for `install` (`archforge rbac`), as a YAML stream: each role before
/// its binding, and each rule under a comment saying why the operator needs it.
pub fn rbac_yaml(install: &Install) -> Result<String> {
    let mut out = String::new();
    for grant in rbac::grants(install) {
        let whys: Vec<&str> = (grant.scopes.iter())
            .flat_map(|s| rbac::permissions(*s))
            .map(|p| p.why)
            .collect();
        out.push_str("---\n");
        out.push_str(&explain_rules(
            to_yaml(grant.role.kind(), &grant.role)?,
            &whys,
        ));
        out.push_str("---\n");
        out.push_str(&to_yaml(grant.binding.kind(), &grant.binding)?);
    }
    Ok(out)
}

/// The Helm chart's `templates/_rbac-rules.tpl` (`archforge rbac --chart-rules`): one named
/// template per scope holding its rules, which `templates/rbac.yaml` places in the roles,
/// so the chart carries no hand copy of `rbac::PERMISSIONS`.
pub fn chart_rules() -> Result<String> {
    let mut out = String::from(
        "{{/*\n\
         Generated by `make manifests` (`archforge rbac --chart-rules`) from\n\
         operator/src/rbac.rs: do not edit. The operator's rules for each scope, each under\n\
         its reason; templates/rbac.yaml puts them into the roles.\n\
         */}}\n",
    );
    for scope in Scope::ALL {
        let permissions: Vec<&Permission> = rbac::permissions(scope).collect();
        let rules: Vec<_> = permissions.iter().map(|p| p.rule()).collect();
        let whys: Vec<&str> = permissions.iter().map(|p| p.why).collect();
        out.push_str("\n{{- define \"");
        out.push_str(chart_rules_template(scope));
        out.push_str("\" -}}\n");
        out.push_str(&explain_rules(to_yaml("PolicyRule", &rules)?, &whys));
        out.push_str("{{- end -}}\n");
    }
    Ok(out)
}

/// The name of the chart's template holding `scope`'s rules.
pub fn chart_rules_template(scope: Scope) -> &'static str {
    match scope {
        Scope::Watched => "archforge.rules.watched",
        Scope::Builds => "archforge.rules.builds",
        Scope::BuildSecrets => "archforge.rules.buildSecrets",
        Scope::Cluster => "archforge.rules.cluster",
        Scope::LeaderElection => "archforge.rules.leaderElection",
    }
}

/// Puts `whys[i]` as a comment line above the i-th rule of `yaml`. The YAML writer can only
/// put comments beside scalars, so they are added to its output: every rule starts with
/// `- apiGroups:` because `Permission::rule` always sets the groups.
fn explain_rules(yaml: String, whys: &[&str]) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut whys = whys.iter();
    for line in yaml.split_inclusive('\n') {
        let item = line.trim_start();
        if item.starts_with("- apiGroups:") {
            let why = whys.next().expect("no more rules than permissions");
            let indent = &line[..line.len() - item.len()];
            out.push_str(&format!("{indent}# {why}\n"));
        }
        out.push_str(line);
    }
    assert!(whys.next().is_none(), "every permission has its rule");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: https://example.com/app.git\n";

    fn message(text: &str) -> String {
        match parse_imagebuild("ib.yaml", text) {
            Err(Error::ParseManifest { message, .. }) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_without_its_value() {
        let text = format!(
            "{HEAD}  platforms: \"SUPERSECRET\"\n  output:\n    image: r.example.com/a:v1\n"
        );
        assert_eq!(
            message(&text),
            "spec.platforms: invalid type: found a string, expected a sequence"
        );
        let text = format!(
            "{HEAD}  platforms: [linux/amd64]\n  output:\n    image: r.example.com/a:v1\n    mediaType: SUPERSECRET\n"
        );
        assert_eq!(
            message(&text),
            "spec.output.mediaType: unknown variant, expected `oci` or `docker`"
        );
        let text = format!("{HEAD}  platforms: [linux/amd64]\n");
        assert_eq!(message(&text), "spec: missing field `output`");
    }

    #[test]
    fn broken_yaml_is_located_by_document_line_and_column_only() {
        let text = format!(
            "# a comment\n---\n{HEAD}---\nkind: Secret\nstringData:\n  token: 'SUPERSECRET\n"
        );
        let shown = message(&text);
        assert!(
            shown.starts_with("invalid YAML at line 14 column 10 (in its YAML document 2)"),
            "{shown}"
        );
        assert!(!shown.contains("SUPERSECRET"), "{shown}");
        assert_eq!(document_at("a: 1\n---\nb: 2\n", 3), 2);
        assert_eq!(document_at("---\na: 1\n", 2), 1);
    }
}
