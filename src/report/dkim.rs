//! DKIM signing of outgoing reports (mail-auth): RSA-SHA256 (PKCS#1 or PKCS#8 PEM) and Ed25519 (PKCS#8
//! PEM) keys read from files at start, so a missing or unreadable key is a clear error before anything
//! is sent. A key file that its group or other users may read is used, with a warning naming the file
//! and its mode (a private key should be 0600 or 0400, owned by the user rebound runs as).

use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use serde::Deserialize;

/// The signature algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// rsa-sha256.
    RsaSha256,
    /// ed25519-sha256 (RFC 8463).
    Ed25519Sha256,
}

/// `[dkim.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The private key file (PEM).
    pub key: PathBuf,
    /// The algorithm of the key.
    pub algorithm: Algorithm,
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The file could not be read.
    #[error("cannot read DKIM key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a key of the configured algorithm.
    #[error("DKIM key {path} is not a valid {algorithm:?} private key in PEM: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What the crypto layer said (never the key).
        reason: String,
    },
    /// Signing failed.
    #[error("DKIM signing with {domain}/{selector} failed: {reason}")]
    Sign {
        /// d=.
        domain: String,
        /// s=.
        selector: String,
        /// Why.
        reason: String,
    },
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// A loaded signing key.
pub struct DkimKey {
    domain: String,
    selector: String,
    signer: Signer,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DkimKey({}/{})", self.domain, self.selector)
    }
}

/// The headers signed.
const SIGNED: [&str; 8] = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Auto-Submitted"];

impl DkimKey {
    /// Loads the key of `[dkim.NAME]`.
    pub fn load(config: &DkimKeyConfig) -> Result<DkimKey, DkimError> {
        let pem = std::fs::read_to_string(&config.key)
            .map_err(|source| DkimError::Read { path: config.key.clone(), source })?;
        if let Some(mode) = readable_by_others(&config.key) {
            tracing::warn!(
                "DKIM key {} is readable by its group or other users (mode {mode:04o}); \
                 run `chmod 600 {}`",
                config.key.display(),
                config.key.display()
            );
        }
        Self::from_pem(&pem, config, &config.key)
    }

    fn from_pem(pem: &str, config: &DkimKeyConfig, path: &Path) -> Result<DkimKey, DkimError> {
        let bad = |reason: String| DkimError::Key { path: path.to_path_buf(), algorithm: config.algorithm, reason };
        let signer = match config.algorithm {
            Algorithm::RsaSha256 => {
                // The PEM helpers are deprecated in favour of from_key_der(), which takes a type of
                // rustls-pki-types, a crate rebound does not depend on directly.
                #[allow(deprecated)]
                let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
                    RsaKey::<Sha256>::from_rsa_pem(pem)
                } else {
                    RsaKey::<Sha256>::from_pkcs8_pem(pem)
                }
                .map_err(|e| bad(e.to_string()))?;
                Signer::Rsa(DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(SIGNED))
            }
            Algorithm::Ed25519Sha256 => {
                let der = pem_body(pem).ok_or_else(|| bad("no PEM block".into()))?;
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).map_err(|e| bad(e.to_string()))?;
                Signer::Ed25519(
                    DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(SIGNED),
                )
            }
        };
        Ok(DkimKey { domain: config.domain.clone(), selector: config.selector.clone(), signer })
    }

    /// The signing domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The `DKIM-Signature:` header (with its CRLF) for `message`.
    pub fn signature(&self, message: &[u8]) -> Result<String, DkimError> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign { domain: self.domain.clone(), selector: self.selector.clone(), reason: e.to_string() })?;
        Ok(sig.to_header())
    }

    /// `message` with a DKIM-Signature header in front.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let header = self.signature(message)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// The permission bits of `path` when its group or other users may read it (`None` for 0600, 0400, ...
/// or when the mode cannot be read).
pub fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

/// The bytes of the first PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let mut in_block = false;
    let mut b64 = String::new();
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            in_block = true;
        } else if line.starts_with("-----END ") {
            break;
        } else if in_block {
            b64.push_str(line);
        }
    }
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn key_file_readable_by_others_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, b"x").unwrap();
        for (mode, seen) in [(0o600, None), (0o400, None), (0o640, Some(0o640)), (0o604, Some(0o604))] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&key), seen, "mode {mode:o}");
        }
    }

    #[test]
    fn missing_key_file_is_a_clear_error() {
        let c = DkimKeyConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            key: "/nonexistent/key.pem".into(),
            algorithm: Algorithm::RsaSha256,
        };
        let e = DkimKey::load(&c).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
    }
}
