//! Starting and stopping the service: bind both listeners, run the HTTP
//! and gRPC servers and the background tasks (key reload, policy reload,
//! revocation sync, expiry purge), and shut down gracefully so that audit
//! records already accepted are written before exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{App, AppState};
use crate::clock::Clock;
use crate::config::Config;
use crate::ext_authz::grpc::AuthzService;

/// A running Tessera.
pub struct Server {
    pub app: AppState,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Builds the [`App`] and starts serving on the configured addresses
    /// (port 0 picks a free one; see `http_addr`/`grpc_addr`).
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = TcpListener::bind(config.server.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "configuration key `server.listen`: cannot listen on {}: {e}",
                config.server.listen
            )
        })?;
        let grpc = TcpListener::bind(config.server.grpc_listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "configuration key `server.grpc_listen`: cannot listen on {}: {e}",
                    config.server.grpc_listen
                )
            })?;
        let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
        let mut config = config;
        if config.server.listen.port() == 0
            && config.server.public_url == format!("http://{}", config.server.listen)
        {
            // An ephemeral port (tests): publish the address actually bound.
            config.server.public_url = format!("http://{http_addr}");
        }
        let app = AppState(Arc::new(App::build(config, clock).await?));
        let (stop, stopped) = watch::channel(false);

        let router = crate::router::router(app.clone());
        let mut http_stop = stopped.clone();
        let http_task = tokio::spawn(async move {
            let served = axum::serve(
                http,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let mut grpc_stop = stopped.clone();
        let authz = AuthzService::server(app.clone());
        let grpc_task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(authz)
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY every unary Check waits out delayed ACKs (~40 ms).
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    async move {
                        let _ = grpc_stop.wait_for(|s| *s).await;
                    },
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        let background = spawn_background(&app);
        Ok(Self {
            app,
            http_addr,
            grpc_addr,
            stop,
            servers: vec![http_task, grpc_task],
            background,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded), then
    /// stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        for task in self.background {
            task.abort();
        }
    }
}

fn spawn_background(app: &AppState) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        app.revocations.clone().run_sync(app.clock.clone()),
    ));
    tasks.push(tokio::spawn(app.clients.clone().run_sync()));
    if !app.trusted.issuers.is_empty() {
        tasks.push(tokio::spawn(app.trusted.clone().run_refresh()));
    }
    tasks.push(tokio::spawn(
        app.policy
            .clone()
            .run_reload(app.config.policy.reload_interval),
    ));
    let keys = app.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(keys.config.keys.reload_interval);
        loop {
            tick.tick().await;
            if let Err(e) = keys.issuers.reload() {
                tracing::error!(error = %e, "key reload failed; keeping the keys already loaded");
            }
        }
    }));
    if let Some(every) = app.config.aws.lakeformation_sync_interval {
        let lf_app = app.clone();
        tasks.push(tokio::spawn(async move {
            let lf = crate::aws::lakeformation::AwsLakeFormation::new(&lf_app.config.aws).await;
            // One replica syncs at a time: the lease outlives two cycles, so
            // the holder keeps it by renewing each cycle, and another
            // replica takes over within two cycles after it stops.
            let holder = uuid::Uuid::new_v4().to_string();
            let ttl = i64::try_from(every.as_secs().saturating_mul(2)).unwrap_or(i64::MAX);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let synced = crate::data::sync::cycle(
                    lf_app.store.as_ref(),
                    &lf,
                    &lf_app.audit,
                    lf_app.clock.as_ref(),
                    &holder,
                    ttl,
                )
                .await;
                match synced {
                    Ok(Some(report)) => {
                        if let Some(e) = report.error {
                            tracing::warn!(error = %e, "Lake Formation sync stopped at a failed change; will retry");
                        }
                    }
                    Ok(None) => {
                        tracing::debug!("Lake Formation sync: another replica holds the lease")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Lake Formation sync failed; will retry")
                    }
                }
            }
        }));
    }
    let purge = app.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = purge.store.purge_expired(purge.clock.now()).await {
                tracing::warn!(error = %e, "purging expired assertion ids and revocations failed");
            }
        }
    }));
    tasks
}
