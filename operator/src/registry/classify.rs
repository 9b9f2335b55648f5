//! What a failed exchange with a registry means: `Classified::Transient` for outages and
//! overload, `Classified::Final` with a specific `RegistryError` for everything else.

use oci_client::errors::OciDistributionError;
use reqwest::StatusCode;

use super::bounded::quote;
use super::error::{Classified, RegistryError};
use super::wire::RedirectRefused;

/// What a non-success status means: the caller retries only `Transient`.
pub(super) fn status_error(registry: &str, status: StatusCode, text: &str) -> Classified {
    let registry = registry.to_string();
    let detail = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    };
    match status.as_u16() {
        401 | 403 => Classified::Final(RegistryError::Credentials {
            registry,
            status: detail,
        }),
        404 => Classified::Final(RegistryError::NotFound {
            registry,
            message: detail,
        }),
        // Overload and outages pass; everything else is the registry's considered answer.
        408 | 429 | 500.. => Classified::Transient(detail),
        _ => Classified::Final(RegistryError::Registry {
            registry,
            message: detail,
        }),
    }
}

/// What a non-success `status` from the host the registry redirected a read to means, as
/// `message` (the caller's, naming that host): its answer is never quoted, since the registry
/// chose the page and it may be an internal one.
pub(super) fn foreign_status_error(
    registry: &str,
    status: StatusCode,
    message: String,
) -> Classified {
    let registry = registry.to_string();
    match status.as_u16() {
        404 => Classified::Final(RegistryError::NotFound { registry, message }),
        // The storage behind a registry has outages and overload like the registry.
        408 | 429 | 500.. => Classified::Transient(message),
        // A 401 is refused before this (`send`); a 403 is the storage refusing the
        // registry's pre-signed URL, not archforge's credentials.
        _ => Classified::Final(RegistryError::Registry { registry, message }),
    }
}

/// The first of `e` and its sources that is a `T`.
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What an oci-client error means (oci-client does the pushes of `push_synthetic_image`).
pub(super) fn classify(registry: &str, e: &OciDistributionError) -> Classified {
    let registry = registry.to_string();
    match e {
        OciDistributionError::UnauthorizedError { .. } => {
            Classified::Final(RegistryError::Credentials {
                registry,
                status: "401 Unauthorized".to_string(),
            })
        }
        OciDistributionError::AuthenticationFailure(message) => {
            Classified::Final(RegistryError::Credentials {
                registry,
                status: message.clone(),
            })
        }
        OciDistributionError::ImageManifestNotFoundError(message) => {
            Classified::Final(RegistryError::NotFound {
                registry,
                message: message.clone(),
            })
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => Classified::Final(RegistryError::Credentials {
                registry,
                status: format!("{code} {message}"),
            }),
            404 => Classified::Final(RegistryError::NotFound {
                registry,
                message: message.clone(),
            }),
            408 | 429 | 500.. => Classified::Transient(format!("HTTP {code}: {}", quote(message))),
            _ => Classified::Final(RegistryError::Registry {
                registry,
                message: format!("HTTP {code}: {}", quote(message)),
            }),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as Code;
            let text = envelope.to_string();
            let has = |wanted: &[Code]| envelope.errors.iter().any(|e| wanted.contains(&e.code));
            if has(&[Code::Toomanyrequests]) {
                Classified::Transient(quote(&text))
            } else if has(&[Code::ManifestUnknown, Code::BlobUnknown, Code::NameUnknown]) {
                Classified::Final(RegistryError::NotFound {
                    registry,
                    message: text,
                })
            } else if has(&[Code::Unauthorized, Code::Denied]) {
                Classified::Final(RegistryError::Credentials {
                    registry,
                    status: text,
                })
            } else {
                Classified::Final(RegistryError::Registry {
                    registry,
                    message: text,
                })
            }
        }
        OciDistributionError::RequestError(inner) => classify_reqwest(&registry, inner),
        OciDistributionError::DigestError(_) => Classified::Final(RegistryError::Registry {
            registry,
            message: format!("digest mismatch: {}", quote(&error_chain(e))),
        }),
        other => Classified::Final(RegistryError::Registry {
            registry,
            message: quote(&error_chain(other)),
        }),
    }
}

/// What a failed HTTP exchange means: TLS and protocol trouble is final, only a connection
/// that failed, broke (before or while answering) or timed out is worth another attempt.
pub(super) fn classify_reqwest(registry: &str, e: &reqwest::Error) -> Classified {
    let registry = registry.to_string();
    if let Some(RedirectRefused(why)) = find_source::<RedirectRefused>(e) {
        return Classified::Final(RegistryError::Registry {
            registry,
            message: why.clone(),
        });
    }
    let mut chain = error_chain(e);
    // reqwest names the URL in its errors. Its query (and any user:password) can be a
    // credential: a pre-signed storage URL, docker distribution's upload `_state`.
    if let Some(url) = e.url()
        && (url.query().is_some() || url.fragment().is_some() || !url.username().is_empty())
    {
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        chain = chain.replace(url.as_str(), shown.as_str());
    }
    // rustls reads the first bytes of a plain-HTTP answer ("HTTP/1.1 400 …") as a TLS record
    // of an unknown type and says only "received corrupt message of type InvalidContentType".
    if chain.contains("InvalidContentType") {
        return Classified::Final(RegistryError::PlainHttp { registry });
    }
    let lowered = chain.to_lowercase();
    if lowered.contains("certificate") || lowered.contains("tls") || lowered.contains("handshake") {
        Classified::Final(RegistryError::Tls {
            registry,
            message: chain,
        })
    } else if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
        Classified::Transient(chain)
    } else if e.is_decode() && find_source::<std::io::Error>(e).is_some() {
        // reqwest names a connection that closed mid-body ("end of file before message
        // length reached") a decode error, the I/O error underneath: the network's doing,
        // not the registry's considered answer.
        Classified::Transient(format!("the connection broke off mid-answer: {chain}"))
    } else {
        Classified::Final(RegistryError::Registry {
            registry,
            message: quote(&chain),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_client_errors_are_classified() {
        let retried =
            |e: OciDistributionError| matches!(classify("r", &e), Classified::Transient(_));
        let server = |code: u16| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(retried(server(503)));
        assert!(retried(server(429)));
        assert!(!retried(server(400)));
        assert!(!retried(server(409)));
        assert!(matches!(
            classify("r", &server(404)),
            Classified::Final(RegistryError::NotFound { .. })
        ));
        let digest =
            OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
                expected: "sha256:a".into(),
                actual: "sha256:b".into(),
            });
        assert!(!retried(digest));
        assert!(!retried(OciDistributionError::SpecViolationError(
            "x".into()
        )));
    }

    #[tokio::test]
    async fn a_url_in_a_message_is_shown_without_its_query() {
        // Nothing listens on port 1 of loopback: a connection error naming the URL.
        let closed = "http://127.0.0.1:1/v2/a/blobs/uploads/u?_state=S1GNED&X-Amz-Signature=S1GNED";
        let e = reqwest::Client::new().get(closed).send().await.unwrap_err();
        assert!(e.to_string().contains("S1GNED"), "reqwest names it: {e}");
        let Classified::Transient(message) = classify_reqwest("r", &e) else {
            panic!("a refused connection is transient");
        };
        assert!(
            message.contains("http://127.0.0.1:1/v2/a/blobs/uploads/u)"),
            "{message}"
        );
        assert!(!message.contains("S1GNED"), "{message}");
    }

    #[test]
    fn only_outages_and_overload_are_retried() {
        let retried = |code: u16| {
            matches!(
                status_error("r", StatusCode::from_u16(code).unwrap(), ""),
                Classified::Transient(_)
            )
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retried(code), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 415] {
            assert!(!retried(code), "{code}");
        }
        assert!(matches!(
            status_error("r", StatusCode::NOT_FOUND, ""),
            Classified::Final(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            status_error("r", StatusCode::FORBIDDEN, ""),
            Classified::Final(RegistryError::Credentials { .. })
        ));
    }
}
