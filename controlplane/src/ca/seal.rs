//! Sealing the CA private key at rest with AES-256-GCM under an operator key.
//!
//! The root key is replicated through the store only in sealed form; the
//! 32-byte [`SealKey`] lives outside the store (a file or `TRELLIS_CA_KEY`),
//! so a copied store alone does not give away the mesh root.
//!
//! Sealed layout: `VERSION (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! The version byte is also bound as associated data.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::CaError;

const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
/// Domain separation so a blob sealed for another purpose with the same key
/// does not open here.
const AAD_LABEL: &[u8] = b"trellis-ca-seal";

/// A 32-byte AES-256-GCM key that seals the CA private key at rest.
///
/// `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; KEY_LEN]);

impl SealKey {
    /// A new random key from the OS generator.
    ///
    /// # Panics
    /// If the OS random generator fails, which leaves no safe way to make keys.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        fill_random(&mut key);
        Self(key)
    }

    /// Parses standard base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(s: &str) -> Result<Self, CaError> {
        Self::parse(s, "the given value")
    }

    /// Reads a key file holding the base64 key (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaError::SealKeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &format!("file {}", path.display()))
    }

    /// The key as standard base64, for writing the key file at init.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    fn parse(s: &str, origin: &str) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::BadSealKey {
            origin: origin.to_string(),
            reason,
        };
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty".to_string()));
        }
        // The decode error names one invalid character and its offset, which
        // cannot be part of a valid key, so it is safe to show.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|e| bad(format!("not valid base64 ({e})")))?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            bad(format!(
                "it decodes to {} bytes, not {KEY_LEN}",
                bytes.len()
            ))
        })?;
        Ok(Self(key))
    }

    fn aead_key(&self) -> LessSafeKey {
        // Cannot fail: the key length is fixed to what AES-256 expects.
        let unbound = UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key");
        LessSafeKey::new(unbound)
    }

    /// Encrypts and authenticates `plaintext` under a fresh random nonce.
    ///
    /// # Panics
    /// If the OS random generator fails (no safe nonce can be made).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut buf = plaintext.to_vec();
        self.aead_key()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(VERSION), &mut buf)
            // Fails only for inputs of tens of gigabytes; a CA key is < 1 KiB.
            .expect("AES-GCM seal of a small buffer");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    /// Decrypts what [`SealKey::seal`] produced.
    ///
    /// A wrong key, truncated or altered data all give [`CaError::WrongSealKey`];
    /// an unknown leading version byte gives [`CaError::SealVersion`].
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CaError> {
        let (&version, rest) = sealed.split_first().ok_or(CaError::WrongSealKey)?;
        if version != VERSION {
            return Err(CaError::SealVersion {
                found: version,
                supported: VERSION,
            });
        }
        if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CaError::WrongSealKey);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError::WrongSealKey)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .aead_key()
            .open_in_place(nonce, aad(version), &mut buf)
            .map_err(|_| CaError::WrongSealKey)?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

fn aad(version: u8) -> Aad<[u8; AAD_LABEL.len() + 1]> {
    let mut a = [0u8; AAD_LABEL.len() + 1];
    a[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
    a[AAD_LABEL.len()] = version;
    Aad::from(a)
}

fn fill_random(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the OS random generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = SealKey::generate();
        let sealed = key.seal(b"-----BEGIN PRIVATE KEY-----");
        assert_eq!(sealed[0], VERSION);
        assert_eq!(key.open(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        // Fresh nonce per seal: same plaintext, different blobs.
        assert_ne!(key.seal(b"x"), key.seal(b"x"));
        assert_eq!(key.open(&key.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_key_is_refused_with_operator_hint() {
        let sealed = SealKey::generate().seal(b"secret");
        let err = SealKey::generate().open(&sealed).unwrap_err();
        assert!(matches!(err, CaError::WrongSealKey));
        let msg = err.to_string();
        assert!(msg.contains("TRELLIS_CA_KEY"), "{msg}");
        assert!(msg.contains("CA key file"), "{msg}");
    }

    #[test]
    fn tampered_or_truncated_data_is_refused() {
        let key = SealKey::generate();
        let sealed = key.seal(b"secret key material");
        for i in 1..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(
                matches!(key.open(&t), Err(CaError::WrongSealKey)),
                "byte {i}"
            );
        }
        for len in 0..sealed.len() {
            assert!(
                matches!(key.open(&sealed[..len]), Err(CaError::WrongSealKey)),
                "len {len}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(key.open(&longer), Err(CaError::WrongSealKey)));
    }

    #[test]
    fn unknown_version_is_named() {
        let key = SealKey::generate();
        let mut sealed = key.seal(b"secret");
        sealed[0] = 7;
        let err = key.open(&sealed).unwrap_err();
        assert!(
            matches!(
                err,
                CaError::SealVersion {
                    found: 7,
                    supported: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn base64_round_trip_and_errors() {
        let key = SealKey::generate();
        let b64 = key.to_base64();
        assert_eq!(b64.len(), 44);
        assert_eq!(SealKey::from_base64(&format!("  {b64}\n")).unwrap(), key);

        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let err = SealKey::from_base64(&short).unwrap_err();
        assert!(matches!(err, CaError::BadSealKey { .. }));
        assert!(err.to_string().contains("16 bytes, not 32"), "{err}");

        let err = SealKey::from_base64("not*base64!").unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");

        let err = SealKey::from_base64(" \n").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        let key = SealKey::generate();
        std::fs::write(&path, format!("{}\n", key.to_base64())).unwrap();
        assert_eq!(SealKey::load(&path).unwrap(), key);

        std::fs::write(&path, "garbage").unwrap();
        let err = SealKey::load(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        let missing = dir.path().join("missing.key");
        let err = SealKey::load(&missing).unwrap_err();
        assert!(matches!(err, CaError::SealKeyFile { .. }), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key =
            SealKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([0xAB; 32]))
                .unwrap();
        assert_eq!(format!("{key:?}"), "SealKey([redacted])");
    }
}
