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
    pub async fn record(&self, mut record: AuditRecord) -> Result<(), AuditError> {
        clean_record(&mut record);
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
        match store.append_audit(&records).await {
            Ok(()) => replies.into_iter().for_each(|r| {
                let _ = r.send(Ok(()));
            }),
            Err(e) => {
                // Append one by one: a transient failure (lock timeout,
                // dropped connection) gets its retry, and a record the store
                // cannot hold fails alone instead of taking its batch along.
                tracing::warn!(error = %e, records = records.len(), "audit batch failed, appending records one by one");
                for (record, reply) in records.into_iter().zip(replies) {
                    let result = store.append_audit(std::slice::from_ref(&record)).await.map_err(|e| {
                        tracing::error!(error = %e, event = %record.event, "audit record could not be written");
                        Arc::new(e)
                    });
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// Longest text kept in one audit field.
const MAX_FIELD: usize = 1024;

/// Audit fields come partly from callers (paths, request ids, claimed
/// client ids): control characters become U+FFFD and length is bounded, so
/// every record can be stored and read back on either database.
fn clean(text: &mut String) {
    if text.len() > MAX_FIELD || text.chars().any(char::is_control) {
        *text = text
            .chars()
            .take(MAX_FIELD)
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
    }
}

fn clean_record(r: &mut AuditRecord) {
    for field in [&mut r.event, &mut r.decision, &mut r.reason] {
        clean(field);
    }
    for field in [
        &mut r.client_id,
        &mut r.subject,
        &mut r.principal,
        &mut r.tenant,
        &mut r.audience,
        &mut r.scopes,
        &mut r.route,
        &mut r.policy_version,
        &mut r.jti,
        &mut r.request_id,
        &mut r.peer,
        &mut r.actor,
        &mut r.upstream_issuer,
        &mut r.dataset,
        &mut r.purpose,
        &mut r.permission,
        &mut r.role_arn,
        &mut r.session_name,
        &mut r.source_identity,
        &mut r.access_key_id,
    ]
    .into_iter()
    .flatten()
    {
        clean(field);
    }
}
