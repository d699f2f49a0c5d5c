//! [`App`]: every dependency of the service, built once and shared by the
//! HTTP and gRPC servers through [`AppState`].

use std::ops::Deref;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::config::Config;
use crate::issuer::{Issuers, TokenError, VerifiedToken};
use crate::jose::JwsError;
use crate::metrics::Metrics;
use crate::oauth::client_cache::ClientCache;
use crate::oauth::introspection::check_token;
use crate::policy::PolicyHandle;
use crate::revocation::Revocations;
use crate::store::Store;
use crate::trusted::TrustedIssuers;

pub struct App {
    /// Checked configuration.
    pub config: Config,
    /// Source of "now"; a fixed clock in tests.
    pub clock: Arc<dyn Clock>,
    /// Registry, replay and revocation state, audit log.
    pub store: Arc<dyn Store>,
    /// Registered clients, cached and kept in step with the store.
    pub clients: Arc<ClientCache>,
    /// The human and service issuers with their key rings and the
    /// verified-token cache.
    pub issuers: Issuers,
    /// Revoked token ids, in memory, synced from the store.
    pub revocations: Arc<Revocations>,
    /// The route policy snapshot, hot-reloaded.
    pub policy: Arc<PolicyHandle>,
    /// STS, for federated credentials.
    pub broker: Arc<dyn crate::aws::CredentialBroker>,
    /// Still-fresh AWS credentials per binding (`aws.credential_reuse_margin`).
    pub credentials: crate::oauth::grants::aws_credentials::CredentialCache,
    /// Datasets and grants, in memory, reloaded when the registry changes.
    pub data: crate::data::DataCache,
    /// Upstream issuers (company IdP, Kubernetes clusters) and their keys.
    pub trusted: Arc<TrustedIssuers>,
    /// Batched, hash-chained audit writer.
    pub audit: AuditLog,
    pub metrics: Metrics,
}

impl App {
    /// Connects the store (applying migrations), loads keys, policy and
    /// revocations, and starts the audit writer.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let policy = Arc::new(PolicyHandle::load(config.policy.file.clone())?);
        let store = crate::store::connect(&config.store)
            .await
            .map_err(|e| anyhow::anyhow!("configuration key `store.url`: {e:#}"))?;
        let issuers = Issuers::load(&config, clock.now())
            .map_err(|e| anyhow::anyhow!("configuration key `keys.dir`: {e:#}"))?;
        let clients = Arc::new(ClientCache::load(store.clone()).await?);
        let revocations = Arc::new(Revocations::load(store.clone(), clock.now()).await?);
        let audit = AuditLog::spawn(store.clone(), config.audit.batch_max);
        let data = crate::data::DataCache::new(store.clone());
        let broker = Arc::new(crate::aws::AwsBroker::new(&config.aws).await);
        let trusted = Arc::new(TrustedIssuers::load(
            &config.trusted_issuers,
            config.server.max_token_bytes,
            config.oauth.clock_skew.as_secs() as i64,
            config.oauth.max_delegation_depth,
            clock.clone(),
        ));
        Ok(Self {
            config,
            clock,
            store,
            clients,
            issuers,
            revocations,
            policy,
            data,
            broker,
            credentials: Default::default(),
            trusted,
            audit,
            metrics: Metrics::default(),
        })
    }
}

impl App {
    /// The datasets and grants as of the registry version this replica last
    /// saw; a failure to load them is logged here and refuses the request.
    pub async fn data_snapshot(&self) -> Result<Arc<crate::data::DataSnapshot>, ()> {
        if self.clients.is_stale() {
            // A grant revoked since the last poll could still allow.
            tracing::error!("registry has not been polled successfully recently");
            return Err(());
        }
        self.data
            .snapshot(self.clients.version())
            .await
            .map_err(|e| tracing::error!(error = %e, "loading datasets failed"))
    }

    /// Verifies a presented bearer token: one of Tessera's own (checked
    /// against the revocation set), or else one from a trusted issuer.
    pub async fn verify_presented(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        match check_token(self, token, self.clock.now()) {
            // Not ours by type or key: perhaps a trusted issuer's.
            Err(e @ (TokenError::WrongType | TokenError::Jws(JwsError::UnknownKey)))
                if !self.trusted.issuers.is_empty() =>
            {
                match self.trusted.verify(token).await {
                    Err(TokenError::UntrustedIssuer) => Err(e),
                    other => other,
                }
            }
            other => other,
        }
    }
}

/// Shared handle to the [`App`].
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}
