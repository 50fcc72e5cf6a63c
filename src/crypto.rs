//! Secrets at rest: AES-256-GCM under the configured master key, a random 96-bit nonce
//! per value. Ciphertexts name the key that made them (a short fingerprint), so the
//! master key can be rotated: old keys stay configured for decryption while
//! `postwire connections rekey` re-encrypts under the new one.
//!
//! Each ciphertext is bound to what it belongs to (the connection's id, as AES-GCM
//! associated data): copied onto another row, it no longer decrypts, so a password
//! can only ever be used by the connection it was stored for. Values of the first
//! format (version 1, unbound) still decrypt, and `connections rekey` rewrites them.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The current format: bound to associated data.
const VERSION: u8 = 2;
/// The first format, without associated data: read, never written.
const VERSION_UNBOUND: u8 = 1;
const FINGERPRINT: usize = 4;
const NONCE: usize = 12;

/// The development key, used only when no master key is configured in the
/// `development` and `test` environments. Never for real secrets.
const DEV_KEY: [u8; 32] = *b"postwire-development-master-key!";

/// Encrypts and decrypts secrets.
#[derive(Clone)]
pub struct Cipher {
    current: (Aes256Gcm, [u8; FINGERPRINT]),
    previous: Vec<(Aes256Gcm, [u8; FINGERPRINT])>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher").finish_non_exhaustive()
    }
}

/// Why a secret could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the ciphertext is malformed")]
    Malformed,
    #[error("the ciphertext was made with a master key that is not configured")]
    UnknownKey,
    #[error("the ciphertext does not authenticate (wrong key or tampered)")]
    Tampered,
}

impl Cipher {
    /// Builds the cipher from base64 keys (32 bytes each).
    pub fn new(master_key: &str, previous: &[String]) -> anyhow::Result<Cipher> {
        let current = keyed(master_key).map_err(|e| anyhow::anyhow!("security.master_key: {e}"))?;
        let previous = previous
            .iter()
            .enumerate()
            .map(|(i, k)| {
                keyed(k).map_err(|e| anyhow::anyhow!("security.previous_master_keys[{i}]: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Cipher { current, previous })
    }

    /// The well-known development key (see [`DEV_KEY`]).
    pub fn development() -> Cipher {
        Cipher {
            current: from_bytes(&DEV_KEY),
            previous: Vec::new(),
        }
    }

    /// A fresh random key, base64 (for `postwire keys` output and documentation).
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// `version | key fingerprint | nonce | ciphertext+tag`, authenticated together
    /// with `bound_to` (which is not stored: the reader must present it again).
    pub fn encrypt(&self, plaintext: &[u8], bound_to: &[u8]) -> Vec<u8> {
        let (cipher, fingerprint) = &self.current;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: bound_to,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + FINGERPRINT + NONCE + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value stored for `bound_to`.
    pub fn decrypt(&self, data: &[u8], bound_to: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < 1 + FINGERPRINT + NONCE + 16 {
            return Err(CryptoError::Malformed);
        }
        let aad = match data[0] {
            VERSION => bound_to,
            VERSION_UNBOUND => &[],
            _ => return Err(CryptoError::Malformed),
        };
        let fingerprint = &data[1..1 + FINGERPRINT];
        let nonce = Nonce::from_slice(&data[1 + FINGERPRINT..1 + FINGERPRINT + NONCE]);
        let (cipher, _) = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(_, f)| f == fingerprint)
            .ok_or(CryptoError::UnknownKey)?;
        let payload = Payload {
            msg: &data[1 + FINGERPRINT + NONCE..],
            aad,
        };
        cipher
            .decrypt(nonce, payload)
            .map_err(|_| CryptoError::Tampered)
    }

    /// True when `data` should be re-encrypted: made under an older key, or in the
    /// unbound first format.
    pub fn is_stale(&self, data: &[u8]) -> bool {
        data.first() != Some(&VERSION) || data.get(1..1 + FINGERPRINT) != Some(&self.current.1[..])
    }
}

fn keyed(base64_key: &str) -> Result<(Aes256Gcm, [u8; FINGERPRINT]), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_key.trim())
        .map_err(|_| "is not valid base64".to_owned())?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("must be 32 bytes, got {}", b.len()))?;
    Ok(from_bytes(&key))
}

fn from_bytes(key: &[u8; 32]) -> (Aes256Gcm, [u8; FINGERPRINT]) {
    let digest = Sha256::digest(key);
    let mut fingerprint = [0; FINGERPRINT];
    fingerprint.copy_from_slice(&digest[..FINGERPRINT]);
    (Aes256Gcm::new(key.into()), fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_with_a_fresh_nonce_each_time() {
        let cipher = Cipher::new(&Cipher::generate_key(), &[]).unwrap();
        let a = cipher.encrypt(b"hunter2", b"id-1");
        let b = cipher.encrypt(b"hunter2", b"id-1");
        assert_ne!(a, b, "random nonces");
        assert!(!a.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(cipher.decrypt(&a, b"id-1").unwrap(), b"hunter2");
    }

    #[test]
    fn tampering_and_unknown_keys_are_detected() {
        let cipher = Cipher::new(&Cipher::generate_key(), &[]).unwrap();
        let mut sealed = cipher.encrypt(b"secret", b"id");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            cipher.decrypt(&sealed, b"id"),
            Err(CryptoError::Tampered)
        ));
        let other = Cipher::new(&Cipher::generate_key(), &[]).unwrap();
        assert!(matches!(
            other.decrypt(&cipher.encrypt(b"x", b"id"), b"id"),
            Err(CryptoError::UnknownKey)
        ));
    }

    #[test]
    fn a_rotated_key_still_decrypts_old_values() {
        let old_key = Cipher::generate_key();
        let old = Cipher::new(&old_key, &[]).unwrap();
        let sealed = old.encrypt(b"pw", b"id");
        let rotated = Cipher::new(&Cipher::generate_key(), &[old_key]).unwrap();
        assert_eq!(rotated.decrypt(&sealed, b"id").unwrap(), b"pw");
        assert!(rotated.is_stale(&sealed));
        assert!(!rotated.is_stale(&rotated.encrypt(b"pw", b"id")));
    }

    #[test]
    fn a_value_moved_to_another_owner_does_not_decrypt() {
        let cipher = Cipher::new(&Cipher::generate_key(), &[]).unwrap();
        let sealed = cipher.encrypt(b"pw", b"connection-a");
        assert!(matches!(
            cipher.decrypt(&sealed, b"connection-b"),
            Err(CryptoError::Tampered)
        ));
        assert_eq!(cipher.decrypt(&sealed, b"connection-a").unwrap(), b"pw");
    }

    #[test]
    fn unbound_values_of_the_first_format_still_decrypt_and_are_stale() {
        let cipher = Cipher::new(&Cipher::generate_key(), &[]).unwrap();
        // The first format: version 1, no associated data.
        let (aes, fingerprint) = &cipher.current;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut legacy = vec![VERSION_UNBOUND];
        legacy.extend_from_slice(fingerprint);
        legacy.extend_from_slice(&nonce);
        legacy.extend_from_slice(&aes.encrypt(&nonce, &b"old"[..]).unwrap());
        assert_eq!(cipher.decrypt(&legacy, b"any").unwrap(), b"old");
        assert!(cipher.is_stale(&legacy));
    }

    #[test]
    fn bad_keys_are_refused_with_the_setting_named() {
        let err = Cipher::new("c2hvcnQ=", &[]).unwrap_err().to_string();
        assert!(
            err.contains("security.master_key") && err.contains("32 bytes"),
            "{err}"
        );
    }
}
