//! ECDSA P-256 keys as cosign writes them: PKCS#8 and SEC1 PEM, and cosign's own encrypted
//! format (scrypt-derived key, NaCl secretbox; go-securesystemslib's `encrypted` package).
//!
//! Nothing here ever puts key bytes, a password or the PEM text into an error or `Debug`:
//! these messages reach status, Events and logs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use serde::Deserialize;

use crate::registry::sha256_digest;

/// Why a key could not be used. The messages name the format and what is wrong, never a
/// byte of the key or the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the signing key is not PEM: expected a -----BEGIN PRIVATE KEY----- (PKCS#8), -----BEGIN EC PRIVATE KEY----- (SEC1) or -----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY----- (cosign) block"
    )]
    NotPem,
    #[error(
        "the signing key is a {label:?} PEM block; archforge signs with ECDSA P-256 keys: PKCS#8 PRIVATE KEY, SEC1 EC PRIVATE KEY or cosign's ENCRYPTED SIGSTORE PRIVATE KEY (cosign generate-key-pair)"
    )]
    UnsupportedPem { label: String },
    #[error("the {format} signing key is malformed: {reason}")]
    Malformed {
        format: &'static str,
        reason: &'static str,
    },
    #[error("the {format} signing key is not an ECDSA P-256 key (cosign and archforge use P-256)")]
    NotP256 { format: &'static str },
    #[error(
        "the cosign signing key could not be decrypted: wrong cosign.password (or the key is corrupt)"
    )]
    WrongPassword,
    #[error(
        "the cosign signing key's scrypt parameters ask for {what}; archforge allows at most N=2^16, r=8, p=4 (cosign uses N=2^15, r=8, p=1)"
    )]
    KdfTooCostly { what: String },
    #[error(
        "the Secret has no \"cosign.key\" key: it needs cosign.key (a PEM private key) and, for an encrypted key, cosign.password, as `cosign generate-key-pair k8s://<namespace>/<name>` writes them"
    )]
    NoKeyInSecret,
    #[error(
        "the public key is not a PEM PUBLIC KEY block of an ECDSA P-256 key (cosign.pub, or `cosign public-key`)"
    )]
    NotPublicKey,
}

/// The Secret key holding the PEM private key (cosign's layout).
pub const COSIGN_KEY: &str = "cosign.key";
/// The Secret key holding the private key's password (cosign's layout).
pub const COSIGN_PASSWORD: &str = "cosign.password";

/// A P-256 signing key. Its `Debug` shows the public key's fingerprint only.
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key().fingerprint())
            .finish()
    }
}

/// How many cosign keys are decrypted at once: each holds scrypt's 128·r·N bytes while it
/// runs, so many ImageBuilds with costly keys must not multiply that by their number.
static KDF_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The two PEM labels cosign has written its encrypted keys under (2.x, then 1.x).
const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];

/// The first PEM block of `text`: its label and base64 body (without whitespace).
fn pem_block(text: &str) -> Option<(&str, String)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest[body_start..].find(&end_marker)? + body_start;
    let body: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Some((label, body))
}

/// A PEM label from user input, shown in a message only when it looks like one.
fn shown_label(label: &str) -> String {
    if label.len() <= 40 && label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
        label.to_string()
    } else {
        "unrecognised".to_string()
    }
}

#[derive(Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

const COSIGN: &str = "cosign encrypted";

fn malformed(reason: &'static str) -> KeyError {
    KeyError::Malformed {
        format: COSIGN,
        reason,
    }
}

/// Decrypts cosign's encrypted key body (the PEM block's bytes: a JSON document) to the
/// PKCS#8 DER it holds.
fn decrypt_cosign(body: &[u8], password: &[u8]) -> Result<Vec<u8>, KeyError> {
    // serde's messages may quote the document: only a fixed reason goes out.
    let doc: Encrypted = serde_json::from_slice(body)
        .map_err(|_| malformed("its body is not the JSON document cosign writes"))?;
    if doc.kdf.name != "scrypt" {
        return Err(malformed("its kdf is not scrypt"));
    }
    if doc.cipher.name != "nacl/secretbox" {
        return Err(malformed("its cipher is not nacl/secretbox"));
    }
    let KdfParams { n, r, p } = doc.kdf.params;
    if !n.is_power_of_two() || n < 2 {
        return Err(malformed("its scrypt N is not a power of two"));
    }
    // A Secret anyone with write access to the namespace can edit must not make the
    // operator allocate gigabytes or spin for minutes: cap the cost well above cosign's.
    if n > 1 << 16 || r > 8 || p > 4 || r == 0 || p == 0 {
        return Err(KeyError::KdfTooCostly {
            what: format!("N={n}, r={r}, p={p}"),
        });
    }
    let salt = STANDARD
        .decode(&doc.kdf.salt)
        .map_err(|_| malformed("its salt is not base64"))?;
    let nonce = STANDARD
        .decode(&doc.cipher.nonce)
        .map_err(|_| malformed("its nonce is not base64"))?;
    if nonce.len() != 24 {
        return Err(malformed("its nonce is not 24 bytes"));
    }
    let ciphertext = STANDARD
        .decode(&doc.ciphertext)
        .map_err(|_| malformed("its ciphertext is not base64"))?;
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32)
        .map_err(|_| malformed("its scrypt parameters are invalid"))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &salt, &params, &mut key)
        .map_err(|_| malformed("its scrypt parameters are invalid"))?;
    let cipher = XSalsa20Poly1305::new(Key::from_slice(&key));
    key.fill(0);
    cipher
        .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map_err(|_| KeyError::WrongPassword)
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` (both
    /// unencrypted), or cosign's `ENCRYPTED SIGSTORE PRIVATE KEY` / `ENCRYPTED COSIGN
    /// PRIVATE KEY`, decrypted with `password` (none is the empty password, as cosign's
    /// `COSIGN_PASSWORD=""`). The key must be ECDSA P-256.
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>) -> Result<SigningKey, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
        let (label, body) = pem_block(text).ok_or(KeyError::NotPem)?;
        let der = || {
            STANDARD.decode(&body).map_err(|_| KeyError::Malformed {
                format: "PEM",
                reason: "its body is not base64",
            })
        };
        let secret = match label {
            "PRIVATE KEY" => p256::SecretKey::from_pkcs8_der(&der()?)
                .map_err(|_| KeyError::NotP256 { format: "PKCS#8" })?,
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der()?)
                .map_err(|_| KeyError::NotP256 { format: "SEC1" })?,
            l if ENCRYPTED_LABELS.contains(&l) => {
                let pkcs8 = decrypt_cosign(&der()?, password.unwrap_or_default())?;
                p256::SecretKey::from_pkcs8_der(&pkcs8)
                    .map_err(|_| KeyError::NotP256 { format: COSIGN })?
            }
            other => {
                return Err(KeyError::UnsupportedPem {
                    label: shown_label(other),
                });
            }
        };
        Ok(SigningKey {
            inner: p256::ecdsa::SigningKey::from(secret),
        })
    }

    /// [`SigningKey::from_pem`] on tokio's blocking pool, at most two at a time.
    /// Decrypting a cosign key runs scrypt with the cost its own document names: a tenant's
    /// Secret can ask for up to a second of CPU and 64 MiB (the cap), which on the async
    /// runtime would stall the leader lease, the probes and every other reconcile with it.
    pub async fn from_pem_off_runtime(
        pem: Vec<u8>,
        password: Option<Vec<u8>>,
    ) -> Result<SigningKey, KeyError> {
        let _slot = KDF_SLOTS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || SigningKey::from_pem(&pem, password.as_deref()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The key of a Secret's data laid out as `cosign generate-key-pair k8s://` writes it:
    /// `cosign.key` (PEM) and, optionally, `cosign.password`.
    pub fn from_cosign_secret(
        data: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<SigningKey, KeyError> {
        let pem = data
            .get(COSIGN_KEY)
            .filter(|k| !k.is_empty())
            .ok_or(KeyError::NoKeyInSecret)?;
        SigningKey::from_pem(pem, data.get(COSIGN_PASSWORD).map(Vec::as_slice))
    }

    /// A fresh random key (for `make demo` and tests).
    pub fn generate() -> SigningKey {
        SigningKey {
            inner: p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
        }
    }

    /// The unencrypted PKCS#8 PEM of this key, for writing a freshly generated key to a
    /// file the caller protects. Never logged.
    pub fn to_pkcs8_pem(&self) -> String {
        use p256::pkcs8::EncodePrivateKey;
        p256::SecretKey::from(self.inner.clone())
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a P-256 key encodes")
            .to_string()
    }

    /// The public key as a PEM `PUBLIC KEY` block (what `cosign public-key` prints).
    pub fn public_pem(&self) -> String {
        self.public_key().to_pem()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            inner: *self.inner.verifying_key(),
        }
    }

    /// The ASN.1 DER ECDSA-P256-SHA256 signature of `message`, as cosign writes it.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.inner.sign(message);
        let der: DerSignature = signature.to_der();
        der.as_bytes().to_vec()
    }
}

/// A P-256 public key, to verify signatures with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    inner: VerifyingKey,
}

impl PublicKey {
    /// `PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 public key encodes")
    }

    /// `sha256:` of the public key's DER: names a key in messages without being it.
    pub fn fingerprint(&self) -> String {
        let der = self
            .inner
            .to_public_key_der()
            .expect("a P-256 public key encodes");
        sha256_digest(der.as_bytes())
    }

    /// Whether `signature` (ASN.1 DER) is this key's ECDSA-P256-SHA256 signature of
    /// `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_der(signature)
            .map(|s| self.inner.verify(message, &s).is_ok())
            .unwrap_or(false)
    }
}

/// Reads a PEM `PUBLIC KEY` (PKIX) P-256 key, as `cosign generate-key-pair` writes cosign.pub.
pub fn load_public_key(pem: &[u8]) -> Result<PublicKey, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPublicKey)?;
    let inner =
        VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| KeyError::NotPublicKey)?;
    Ok(PublicKey { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_and_sec1_round_trip() {
        let key = SigningKey::generate();
        let pkcs8 = key.to_pkcs8_pem();
        let again = SigningKey::from_pem(pkcs8.as_bytes(), None).unwrap();
        assert_eq!(again.public_pem(), key.public_pem());
        let public = load_public_key(key.public_pem().as_bytes()).unwrap();
        let sig = again.sign(b"payload");
        assert!(public.verify(b"payload", &sig));
        assert!(!public.verify(b"payloaD", &sig));
        assert!(!SigningKey::generate().public_key().verify(b"payload", &sig));

        use p256::elliptic_curve::SecretKey;
        let sec1 = SecretKey::<p256::NistP256>::from(key.inner.clone())
            .to_sec1_pem(LineEnding::LF)
            .unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let from_sec1 = SigningKey::from_pem(sec1.as_bytes(), None).unwrap();
        assert_eq!(from_sec1.public_pem(), key.public_pem());
    }

    #[test]
    fn errors_and_debug_hold_no_key_material() {
        let key = SigningKey::generate();
        let pem = key.to_pkcs8_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let debug = format!("{key:?}");
        assert!(debug.contains("sha256:"), "{debug}");
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line));
        }
        // A truncated key, another curve's label, garbage in the body.
        let truncated = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            &body[..body.len() - 8]
        );
        let other = pem.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        for bad in [truncated.as_str(), other.as_str(), &body, "x"] {
            let err = SigningKey::from_pem(bad.as_bytes(), Some(b"hunter2")).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&body[..16]), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn a_cosign_secret_needs_its_key() {
        let key = SigningKey::generate();
        let mut data = std::collections::BTreeMap::new();
        assert_eq!(
            SigningKey::from_cosign_secret(&data).unwrap_err(),
            KeyError::NoKeyInSecret
        );
        data.insert(COSIGN_KEY.to_string(), key.to_pkcs8_pem().into_bytes());
        let read = SigningKey::from_cosign_secret(&data).unwrap();
        assert_eq!(read.public_key(), key.public_key());
    }

    #[test]
    fn costly_kdf_parameters_are_refused_before_running() {
        let doc = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 1u64 << 30, "r": 8, "p": 1}, "salt": "AAAA"},
            "cipher": {"name": "nacl/secretbox", "nonce": STANDARD.encode([0u8; 24])},
            "ciphertext": "AAAA",
        });
        let pem = format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            STANDARD.encode(serde_json::to_vec(&doc).unwrap())
        );
        let err = SigningKey::from_pem(pem.as_bytes(), None).unwrap_err();
        assert!(matches!(err, KeyError::KdfTooCostly { .. }), "{err}");
    }
}
