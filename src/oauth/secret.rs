//! Client secrets: 256 random bits, shown once, stored as a SHA-256
//! digest and compared in constant time. A slow password hash buys nothing
//! for a generated high-entropy secret and would make every token request
//! slow (it is what holds other servers' client_credentials to a few
//! hundred requests per second).

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::store::SecretDigest;

/// A new secret: 43 characters of base64url.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    crate::jose::b64url(&bytes)
}

pub fn digest(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether `presented` matches one of `stored`; every digest is compared,
/// each in constant time.
pub fn matches(presented: &str, stored: &[SecretDigest]) -> bool {
    let d = digest(presented);
    stored
        .iter()
        .fold(false, |found, s| found | bool::from(s.digest.ct_eq(&d)))
}

/// Random identifier for clients and token ids: 128 bits, base64url.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    crate::jose::b64url(&bytes)
}
