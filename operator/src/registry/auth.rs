//! Credentials: which ones a registry gets (from a docker config), and how they meet its
//! challenge (Basic, or a Bearer token from the realm it names).

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::RegistryOptions;
use super::bounded::read_at_most;
use super::classify::{classify_reqwest, status_error};
use super::error::{Classified, RegistryError, RegistryResult};
use super::wire::REQUEST_TIMEOUT;

/// The most a token endpoint's answer may weigh (tokens are a few KiB).
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// What a request does to a repository: decides the token scope asked for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Operation {
    Pull,
    Push,
}

/// Registry credentials in the format of `~/.docker/config.json` and of
/// `kubernetes.io/dockerconfigjson` Secrets.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Clone, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl std::fmt::Debug for DockerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DockerAuth(<redacted>)")
    }
}

/// `https://index.docker.io/v1/` and `registry.example.com` name the same registry key.
fn registry_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

impl DockerConfig {
    pub fn from_json(path: &str, bytes: &[u8]) -> RegistryResult<Self> {
        // serde's own message quotes offending values, which here may be credentials, and
        // this error reaches status and Events: say only where the JSON went wrong.
        serde_json::from_slice(bytes).map_err(|e| RegistryError::DockerConfig {
            path: path.to_string(),
            message: format!(
                "not a docker config ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    }

    pub fn from_file(path: &str) -> RegistryResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::DockerConfig {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(path, &bytes)
    }

    /// The credentials for `registry` (`host[:port]`), anonymous when there are none.
    pub fn auth_for(&self, registry: &str) -> RegistryResult<RegistryAuth> {
        let Some(entry) = self
            .auths
            .iter()
            .find(|(key, _)| registry_key(key) == registry)
            .map(|(_, v)| v)
        else {
            return Ok(RegistryAuth::Anonymous);
        };
        if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        let malformed = |message: &str| RegistryError::DockerConfig {
            path: format!("auths[{registry}]"),
            message: message.to_string(),
        };
        match &entry.auth {
            Some(encoded) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| malformed("auth is not base64"))?;
                let text =
                    String::from_utf8(decoded).map_err(|_| malformed("auth is not UTF-8"))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| malformed("auth is not base64 of user:password"))?;
                Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
            }
            None => Ok(RegistryAuth::Anonymous),
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`).
pub(super) fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key, value.trim().to_string());
    }
    Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    }
}

/// The Authorization header that meets `challenge`, if the credentials can. `http` must
/// follow no redirects (the token request goes to the named realm or nowhere).
pub(super) async fn authorization(
    http: &reqwest::Client,
    options: &RegistryOptions,
    reference: &Reference,
    operation: Operation,
    challenge: Option<Challenge>,
) -> Result<Option<HeaderValue>, Classified> {
    let registry = reference.resolve_registry();
    let auth = options
        .credentials
        .auth_for(registry)
        .map_err(Classified::Final)?;
    let header = |value: String| {
        HeaderValue::from_str(&value).map(Some).map_err(|_| {
            Classified::Final(RegistryError::Credentials {
                registry: registry.to_string(),
                status: "the credentials or token are not a valid HTTP header value".to_string(),
            })
        })
    };
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let challenge = challenge.unwrap_or_default();
    match (challenge.scheme.as_str(), &auth) {
        (_, RegistryAuth::Bearer(token)) => header(format!("Bearer {token}")),
        ("bearer", _) => {
            let token = fetch_token(http, options, reference, operation, &challenge, &auth).await?;
            header(format!("Bearer {token}"))
        }
        (_, RegistryAuth::Basic(user, password)) => header(basic(user, password)),
        (_, RegistryAuth::Anonymous) => Ok(None),
    }
}

/// Asks the challenge's realm for a token, with basic credentials when there are some.
/// `http` must follow no redirects.
async fn fetch_token(
    http: &reqwest::Client,
    options: &RegistryOptions,
    reference: &Reference,
    operation: Operation,
    challenge: &Challenge,
    auth: &RegistryAuth,
) -> Result<String, Classified> {
    let registry = reference.resolve_registry().to_string();
    let refused = |status: String| {
        Classified::Final(RegistryError::Credentials {
            registry: registry.clone(),
            status,
        })
    };
    let realm = challenge
        .params
        .get("realm")
        .and_then(|r| reqwest::Url::parse(r).ok())
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .ok_or_else(|| refused("its Bearer challenge names no usable token realm".into()))?;
    // Credentials go to the realm the registry names (as with docker); never in clear
    // text to a host that was not declared as plain HTTP.
    let realm_host = match (realm.host_str(), realm.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => String::new(),
    };
    if realm.scheme() == "http" && !options.insecure.contains(&realm_host) {
        return Err(refused(format!(
            "its token realm {realm_host} is plain HTTP and not listed with --insecure-registry"
        )));
    }
    let scope = match operation {
        Operation::Pull => format!("repository:{}:pull", reference.repository()),
        Operation::Push => format!("repository:{}:pull,push", reference.repository()),
    };
    let mut query = vec![("scope", scope)];
    if let Some(service) = challenge.params.get("service") {
        query.push(("service", service.clone()));
    }
    let mut request = http.get(realm).query(&query).timeout(REQUEST_TIMEOUT);
    if let RegistryAuth::Basic(user, password) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| classify_reqwest(&registry, &e))?;
    let status = response.status();
    if status.is_redirection() {
        // `http` follows no redirect: the credentials and the token are the named realm's.
        return Err(refused(format!(
            "the token endpoint {realm_host} answered HTTP {status}, a redirect; archforge asks for a token only at the realm the registry names and follows no redirect from it"
        )));
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The token endpoint's text is not quoted: it may echo what was sent.
        return Err(refused(format!(
            "the token endpoint answered HTTP {status}"
        )));
    }
    if !status.is_success() {
        return Err(status_error(&registry, status, "from the token endpoint"));
    }
    let body = read_at_most(&mut response, MAX_TOKEN_BYTES, None)
        .await
        .map_err(|e| classify_reqwest(&registry, &e))?
        .ok_or_else(|| {
            refused(format!(
                "the token endpoint's answer is over the {MAX_TOKEN_BYTES}-byte limit"
            ))
        })?;
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    serde_json::from_slice::<Token>(&body)
        .ok()
        .and_then(|t| t.token.or(t.access_token))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused("the token endpoint's answer carries no token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let json = br#"{"auths": {
            "https://registry.example.com/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "u", "password": "p"}
        }}"#;
        let config = DockerConfig::from_json("config.json", json).unwrap();
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(
            format!("{:?}", config.auth_for("registry.example.com").unwrap()),
            format!("{:?}", basic("user", "pa:ss"))
        );
        assert!(
            matches!(config.auth_for("127.0.0.1:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        assert!(matches!(
            config.auth_for("other.example.com").unwrap(),
            RegistryAuth::Anonymous
        ));
        let misplaced =
            DockerConfig::from_json("c", br#"{"auths": {"r.io": "user:hunter2"}}"#).unwrap_err();
        assert!(!misplaced.to_string().contains("hunter2"), "{misplaced}");
        assert!(misplaced.to_string().contains("line 1"), "{misplaced}");
        let bad = DockerConfig::from_json("c", br#"{"auths": {"r.io": {"auth": "!!"}}}"#).unwrap();
        assert!(matches!(
            bad.auth_for("r.io"),
            Err(RegistryError::DockerConfig { .. })
        ));
    }

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example.com/token");
        assert_eq!(c.params["service"], "registry.example.com");
        assert_eq!(c.params["scope"], "repository:team/app:pull");
        let c = parse_challenge(r#"Basic realm="archforge-test""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "archforge-test");
        assert_eq!(parse_challenge("Basic").params.len(), 0);
    }
}
