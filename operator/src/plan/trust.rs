//! Registry trust, configured once by the platform team: the registries spoken to over plain
//! HTTP and the CA certificates of each registry host. The operator's own registry client,
//! every builder pod and `build --local` read it; this module renders what the builders read
//! (buildah's registries.conf drop-in, BuildKit's buildkitd.toml) from it. Pure: loading the
//! certificates from files happens at the edge (`cli`), once, at start.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The most CA certificate text the operator takes, all hosts together. Every builder pod
/// carries the certificates in its environment, and Linux refuses to start a process one of
/// whose environment strings exceeds 128 KiB (MAX_ARG_STRLEN); 64 KiB is hundreds of CAs.
pub const MAX_CA_BYTES: usize = 64 * 1024;
/// The most registry hosts with certificates, and the most plain-HTTP registries.
pub const MAX_HOSTS: usize = 64;

/// A registry as image references name it: `host`, `host:port` or `[ipv6]:port`. Checked
/// when the setting is read, so that it can be written into TOML and used as a directory
/// name as is: no quotes, backslashes, slashes, spaces or control characters get this far.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct RegistryHost(String);

impl RegistryHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ConfigMap key this host's certificates are kept under. ConfigMap keys allow only
    /// `[-._a-zA-Z0-9]`, so the port's `:` is written `_` (host names have no `_`):
    /// `registry.internal:5000` is `registry.internal_5000`. An IPv6 address has no key.
    pub fn config_map_key(&self) -> Option<String> {
        (!self.0.starts_with('[')).then(|| self.0.replace(':', "_"))
    }

    /// The host a ConfigMap key names (the inverse of [`RegistryHost::config_map_key`]).
    pub fn from_config_map_key(key: &str) -> Result<Self, TrustError> {
        let host = match key.rsplit_once('_') {
            Some((name, port)) if !name.contains('_') => format!("{name}:{port}"),
            Some(_) => {
                return Err(TrustError::Host {
                    value: key.to_string(),
                    reason: "a key holds at most one '_', for the ':' before the port".into(),
                });
            }
            None => key.to_string(),
        };
        // A key named like a file (the chart once took one bundle under `ca.crt`) would
        // parse as a host no registry has: say what a key must be instead.
        let last = host
            .split(':')
            .next()
            .unwrap_or_default()
            .rsplit('.')
            .next();
        if matches!(last, Some("crt" | "pem" | "cer" | "cert" | "key")) && host.contains('.') {
            return Err(TrustError::Host {
                value: key.to_string(),
                reason: "it names a file, not a registry: name each key after the registry host whose CA it holds, with '_' for ':' (registry.internal_5000)".into(),
            });
        }
        host.parse()
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RegistryHost {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: &str| TrustError::Host {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() || s.len() > 261 {
            return Err(refuse("a registry host is 1 to 261 characters"));
        }
        let (name, port) = if let Some(rest) = s.strip_prefix('[') {
            let (address, after) = rest
                .split_once(']')
                .ok_or_else(|| refuse("an IPv6 address is written [address]:port"))?;
            if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return Err(refuse("an IPv6 address holds hex digits and ':' only"));
            }
            match after {
                "" => (None, None),
                _ => (
                    None,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| refuse("only :port may follow ]"))?,
                    ),
                ),
            }
        } else {
            match s.split_once(':') {
                Some((name, port)) => (Some(name), Some(port)),
                None => (Some(s), None),
            }
        };
        if let Some(name) = name {
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            };
            if !name.split('.').all(label_ok) {
                return Err(refuse(
                    "a host name is dot-separated labels of letters, digits and '-' (HOST or HOST:PORT)",
                ));
            }
        }
        if let Some(port) = port {
            let valid = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0);
            if !valid {
                return Err(refuse("a port is a number from 1 to 65535"));
            }
        }
        Ok(RegistryHost(s.to_string()))
    }
}

/// Registry trust as the platform team configured it: checked, bounded and sorted, so the
/// same settings always render the same files (and the same Jobs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegistryTrust {
    insecure: Vec<RegistryHost>,
    certificates: BTreeMap<RegistryHost, String>,
}

impl RegistryTrust {
    /// Plain-HTTP registries and, per registry host, a PEM bundle of CA certificates.
    pub fn new(
        insecure: impl IntoIterator<Item = RegistryHost>,
        certificates: impl IntoIterator<Item = (RegistryHost, String)>,
    ) -> Result<Self, TrustError> {
        let mut insecure: Vec<RegistryHost> = insecure.into_iter().collect();
        insecure.sort();
        insecure.dedup();
        let mut by_host = BTreeMap::new();
        for (host, pem) in certificates {
            check_pem(&host, &pem)?;
            if by_host.insert(host.clone(), pem).is_some() {
                return Err(TrustError::DuplicateHost { host });
            }
        }
        if insecure.len() > MAX_HOSTS || by_host.len() > MAX_HOSTS {
            return Err(TrustError::TooManyHosts { limit: MAX_HOSTS });
        }
        let total: usize = by_host.values().map(String::len).sum();
        if total > MAX_CA_BYTES {
            return Err(TrustError::TooLarge {
                total,
                limit: MAX_CA_BYTES,
            });
        }
        Ok(RegistryTrust {
            insecure,
            certificates: by_host,
        })
    }

    /// Whether nothing is configured: builders then get no registry configuration at all.
    pub fn is_empty(&self) -> bool {
        self.insecure.is_empty() && self.certificates.is_empty()
    }

    /// Registries spoken to over plain HTTP, sorted.
    pub fn insecure(&self) -> &[RegistryHost] {
        &self.insecure
    }

    /// Each registry host with CA certificates, sorted, and its PEM bundle.
    pub fn certificates(&self) -> impl Iterator<Item = (&RegistryHost, &str)> {
        self.certificates.iter().map(|(h, pem)| (h, pem.as_str()))
    }

    /// A containers-registries.conf(5) file for buildah: each plain-HTTP registry as a
    /// `[[registry]]` table with `insecure = true`. It holds nothing else, so that it works
    /// as a drop-in (containers-registries.conf.d(5)) added to the image's own configuration
    /// (search registries, short-name aliases). CAs need no entry: buildah reads them from
    /// certs.d/<host>/ (containers-certs.d(5)).
    pub fn registries_conf(&self) -> String {
        let mut conf =
            String::from("# Written by archforge from the operator's registry trust settings.\n");
        for host in &self.insecure {
            conf.push_str(&format!(
                "\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        conf
    }

    /// A buildkitd.toml: one `[registry."host"]` table per registry, with `http = true` and
    /// `insecure = true` for plain-HTTP ones and `ca = [file]` for those with certificates,
    /// `ca_file(host)` being where that host's bundle is written. One table per host (TOML
    /// refuses a table defined twice).
    pub fn buildkitd_toml(&self, ca_file: impl Fn(&RegistryHost) -> String) -> String {
        let mut hosts: Vec<&RegistryHost> = self
            .insecure
            .iter()
            .chain(self.certificates.keys())
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut conf =
            String::from("# Written by archforge from the operator's registry trust settings.\n");
        for host in hosts {
            conf.push_str(&format!("\n[registry.\"{host}\"]\n"));
            if self.insecure.contains(host) {
                conf.push_str("  http = true\n  insecure = true\n");
            }
            if self.certificates.contains_key(host) {
                // The path is the operator's own (a constant directory and a checked host).
                conf.push_str(&format!("  ca = [\"{}\"]\n", ca_file(host)));
            }
        }
        conf
    }
}

/// A CA bundle as the builders and the operator take it: PEM text with a certificate in it,
/// and no character a file of PEM would not hold.
fn check_pem(host: &RegistryHost, pem: &str) -> Result<(), TrustError> {
    let text_only = pem
        .chars()
        .all(|c| c.is_ascii_graphic() || matches!(c, ' ' | '\n' | '\r' | '\t'));
    if !text_only || !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(TrustError::NotPem { host: host.clone() });
    }
    Ok(())
}

/// Why the registry trust settings were refused (at start, before anything else runs).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{value:?} is not a registry host: {reason}")]
    Host { value: String, reason: String },

    #[error(
        "the CA certificates of registry {host} are not PEM text holding a certificate (-----BEGIN CERTIFICATE-----)"
    )]
    NotPem { host: RegistryHost },

    #[error("registry {host} is given CA certificates twice")]
    DuplicateHost { host: RegistryHost },

    #[error("registry trust lists more than {limit} registries")]
    TooManyHosts { limit: usize },

    #[error(
        "the registry CA certificates add up to {total} bytes, more than the {limit} every builder pod can carry; give each registry only the CA that signs its certificate"
    )]
    TooLarge { total: usize, limit: usize },

    #[error("cannot read the registry CA directory {dir}: {source}")]
    ReadDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read the registry CA file {path}: {message}")]
    ReadFile { path: String, message: String },
}

#[cfg(test)]
mod tests;
