//! Group commit for the audit log: callers hand a record to one writer
//! task and wait; the writer takes everything that queued up meanwhile and
//! appends it in one transaction, then answers every waiter. Under load,
//! one commit (and one fsync) is shared by many requests; when idle, a
//! record is written at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::AuditRecord;
use crate::store::AuditStore;

type Reply = oneshot::Sender<Result<(), Arc<anyhow::Error>>>;

/// Handle for appending audit records; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(AuditRecord, Reply)>,
}

/// Why an audit record could not be made durable. A request whose record
/// fails is refused: access is never granted unaudited.
#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Arc<dyn AuditStore>, batch_max: usize) -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(run(store, rx, batch_max));
        Self { tx }
    }

    /// Returns once the record is committed.
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, reply))
            .await
            .map_err(|_| AuditError("writer stopped".into()))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError(e.to_string())),
            Err(_) => Err(AuditError("writer stopped".into())),
        }
    }
}

async fn run(
    store: Arc<dyn AuditStore>,
    mut rx: mpsc::Receiver<(AuditRecord, Reply)>,
    batch_max: usize,
) {
    let mut batch = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut batch, batch_max).await > 0 {
        let (records, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let mut result = store.append_audit(&records).await;
        if let Err(e) = &result {
            // One retry covers a transient lock timeout or a dropped
            // connection; after that the callers hear about it.
            tracing::warn!(error = %e, "audit append failed, retrying once");
            result = store.append_audit(&records).await;
        }
        let result = result.map_err(|e| {
            tracing::error!(error = %e, records = records.len(), "audit append failed");
            Arc::new(e)
        });
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}
