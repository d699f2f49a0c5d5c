//! The current policy snapshot, and the task that re-reads the policy file
//! when its contents change. A file that no longer parses is logged and
//! ignored: the last good snapshot keeps deciding.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::Policy;

#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
    file: Option<PathBuf>,
}

impl PolicyHandle {
    /// The built-in policy when `file` is `None`; otherwise the file, which
    /// must exist and parse.
    pub fn load(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let policy = match &file {
            None => Policy::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "configuration key `policy.file`: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                Policy::parse(&text).map_err(|e| {
                    anyhow::anyhow!("configuration key `policy.file`: {}: {e}", path.display())
                })?
            }
        };
        Ok(Self {
            current: RwLock::new(Arc::new(policy)),
            file,
        })
    }

    /// A fixed policy, for tests.
    pub fn fixed(policy: Policy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
            file: None,
        }
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.read().clone()
    }

    /// Re-reads the file; returns the new version when it changed.
    pub fn reload(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)?;
        let digest =
            hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
        if digest == self.current().version {
            return Ok(None);
        }
        let policy =
            Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let version = policy.version.clone();
        *self.current.write() = Arc::new(policy);
        Ok(Some(version))
    }

    pub async fn run_reload(self: Arc<Self>, every: Duration) {
        if self.file.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(Some(version)) => tracing::info!(%version, "route policy reloaded"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "route policy not reloaded; the previous version stays in force")
                }
            }
        }
    }
}
