//! Signing keys on disk and the schedule that says which one signs.
//!
//! Layout: `keys/<issuer>/<kid>.json`, one file per key, mode 0600:
//! `{kid, alg, created_at, activates_at, private_key_pem}`. A key signs from
//! its `activates_at` until the next key's `activates_at`; after that it is
//! *retired* and still verifies (and stays in the JWKS) for the issuer's
//! longest token lifetime plus clock skew, so no token in flight becomes
//! unverifiable. `keys rotate` adds a key whose `activates_at` lies
//! `keys.rotation_delay` in the future: it is published first, so every
//! verifier's cached JWKS has it before any token is signed with it. Since
//! the schedule is a pure function of the files and the clock, every
//! replica reading the same directory agrees which key signs, without
//! talking to the others.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::jose::{self, Alg, Jwk, SigningKey, VerifyingKey};

/// One key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub kid: String,
    pub alg: Alg,
    pub created_at: i64,
    pub activates_at: i64,
    pub private_key_pem: String,
}

/// A loaded key with its place in the schedule.
#[derive(Debug)]
pub struct ScheduledKey {
    pub kid: String,
    pub alg: Alg,
    pub activates_at: i64,
    /// When the next key takes over (`None` while this is the newest).
    pub retires_at: Option<i64>,
    /// Last moment a token signed by this key may still be verified.
    pub verify_until: Option<i64>,
    pub signing: Arc<SigningKey>,
    pub verifying: VerifyingKey,
    pub jwk: Jwk,
}

impl ScheduledKey {
    /// Published in the JWKS and accepted for verification at `now`:
    /// next keys, the current key, and retired keys within their grace.
    pub fn is_published(&self, now: i64) -> bool {
        self.verify_until.is_none_or(|until| now < until)
    }
}

/// Every key of one issuer, ordered by activation.
#[derive(Debug, Default)]
pub struct KeyRing {
    pub keys: Vec<ScheduledKey>,
}

impl KeyRing {
    /// Orders the files by `(activates_at, kid)` and derives retirement.
    /// `grace` is how long a retired key keeps verifying.
    pub fn from_files(mut files: Vec<KeyFile>, grace: i64) -> anyhow::Result<Self> {
        files.sort_by(|a, b| (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid)));
        let successors: Vec<Option<i64>> = (0..files.len())
            .map(|i| files.get(i + 1).map(|f| f.activates_at))
            .collect();
        let mut keys = Vec::with_capacity(files.len());
        for (file, retires_at) in files.into_iter().zip(successors) {
            let der = jose::pem_to_pkcs8(&file.private_key_pem)
                .with_context(|| format!("key {}", file.kid))?;
            let signing = SigningKey::from_pkcs8(file.kid.clone(), file.alg, &der)
                .with_context(|| format!("key {}", file.kid))?;
            let jwk = signing.public_jwk();
            keys.push(ScheduledKey {
                kid: file.kid,
                alg: file.alg,
                activates_at: file.activates_at,
                retires_at,
                verify_until: retires_at.map(|r| r + grace),
                verifying: signing.verifying_key(),
                signing: Arc::new(signing),
                jwk,
            });
        }
        Ok(Self { keys })
    }

    /// The key that signs at `now`: the last one already active.
    pub fn signing_at(&self, now: i64) -> Option<&ScheduledKey> {
        self.keys.iter().rev().find(|k| k.activates_at <= now)
    }

    pub fn verifier(&self, kid: &str, now: i64) -> Option<&ScheduledKey> {
        self.keys
            .iter()
            .find(|k| k.kid == kid && k.is_published(now))
    }

    pub fn published(&self, now: i64) -> Vec<Jwk> {
        self.keys
            .iter()
            .filter(|k| k.is_published(now))
            .map(|k| k.jwk.clone())
            .collect()
    }

    /// `(kid, activates_at)` of every key: what a reload compares.
    pub fn schedule(&self) -> Vec<(&str, i64)> {
        self.keys
            .iter()
            .map(|k| (k.kid.as_str(), k.activates_at))
            .collect()
    }
}

const README: &str = "\
# keys/

Signing keys of Tessera's two issuers, created on first start and by
`tessera keys rotate`. Never commit them; this folder is git-ignored.

    keys/human/<kid>.json     keys of {public_url}/issuers/human
    keys/service/<kid>.json   keys of {public_url}/issuers/service

Each file (mode 0600) holds `kid`, `alg`, `created_at`, `activates_at` (Unix
seconds) and `private_key_pem` (PKCS#8). A key signs from its `activates_at`
until the next key's; it then keeps verifying, and stays in the JWKS, for the
issuer's `max_token_ttl` plus one minute. `keys rotate` adds a key that
activates after `keys.rotation_delay`, so it is published before it signs.
Every replica that reads this folder derives the same schedule.
";

/// Reads every `*.json` key file of one issuer's folder.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<KeyFile>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file: KeyFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a key file", path.display()))?;
            files.push(file);
        }
    }
    Ok(files)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Writes a new key that activates at `activates_at`, atomically (temp
/// file + rename) and readable by the owner only.
pub fn write_new_key(dir: &Path, alg: Alg, now: i64, activates_at: i64) -> anyhow::Result<KeyFile> {
    create_private_dir(dir)?;
    if let Some(root) = dir.parent() {
        let readme = root.join("README.md");
        if !readme.exists() {
            let _ = fs::write(readme, README);
        }
    }
    let der = SigningKey::generate_pkcs8(alg)?;
    let kid = {
        // A kid that says nothing about the key but is unique across issuers.
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        jose::b64url(&digest.as_ref()[..12])
    };
    let file = KeyFile {
        kid: kid.clone(),
        alg,
        created_at: now,
        activates_at,
        private_key_pem: jose::pkcs8_to_pem(&der),
    };
    let path: PathBuf = dir.join(format!("{kid}.json"));
    let tmp = dir.join(format!(".{kid}.tmp"));
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(serde_json::to_string_pretty(&file)?.as_bytes())?;
    out.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(file)
}

/// Makes sure a key is active at `now`, creating one if the folder is empty
/// (first start) or holds only future keys.
pub fn ensure_active(dir: &Path, alg: Alg, now: i64) -> anyhow::Result<()> {
    let files = read_dir(dir)?;
    if !files.iter().any(|f| f.activates_at <= now) {
        write_new_key(dir, alg, now, now)?;
    }
    Ok(())
}

/// Adds the next key, published now and signing after `delay` seconds, and
/// deletes files of keys whose verification grace ended over a day ago.
pub fn rotate(dir: &Path, alg: Alg, now: i64, delay: i64, grace: i64) -> anyhow::Result<KeyFile> {
    ensure_active(dir, alg, now)?;
    let files = read_dir(dir)?;
    let latest = files.iter().map(|f| f.activates_at).max().unwrap_or(now);
    let activates_at = (now + delay).max(latest + 1);
    let file = write_new_key(dir, alg, now, activates_at)?;
    let ring = KeyRing::from_files(read_dir(dir)?, grace)?;
    for key in &ring.keys {
        if key.verify_until.is_some_and(|until| until + 86_400 < now) {
            let _ = fs::remove_file(dir.join(format!("{}.json", key.kid)));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_publishes_next_current_and_recent() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("service");
        ensure_active(&d, Alg::ES256, 1000).unwrap();
        let meta = fs::metadata(fs::read_dir(&d).unwrap().next().unwrap().unwrap().path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let next = rotate(&d, Alg::ES256, 2000, 900, 3600).unwrap();
        let ring = KeyRing::from_files(read_dir(&d).unwrap(), 3600).unwrap();
        let first = ring.signing_at(2000).unwrap().kid.clone();
        assert_ne!(first, next.kid);
        assert_eq!(
            ring.published(2000).len(),
            2,
            "next key is published before it signs"
        );
        assert_eq!(ring.signing_at(2900).unwrap().kid, next.kid);
        assert!(
            ring.verifier(&first, 2900 + 3599).is_some(),
            "retired key verifies during grace"
        );
        assert!(ring.verifier(&first, 2900 + 3600).is_none());
        assert_eq!(ring.published(2900 + 3600).len(), 1);
    }
}
