//! Reading and writing Kubernetes objects as YAML files.

use kube::CustomResourceExt;
use serde::Serialize;

use crate::api::ImageBuild;
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
        serde_saphyr::from_multiple(text).map_err(|e| parse_error(e.to_string()))?;
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
    // The path makes "unknown variant `zip`" say which field it is about.
    serde_path_to_error::deserialize(value)
        .map_err(|e| parse_error(format!("{}: {}", e.path(), e.inner())))
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
