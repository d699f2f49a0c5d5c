//! The `tessera` command line: `serve`, `migrate`, and the operator
//! commands for clients, keys and the audit log. Every command prints JSON
//! on stdout (errors go to stderr, with a non-zero exit).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::issuer::keys;
use crate::issuer::{IssuerKind, LEEWAY};
use crate::jose::JwkSet;
use crate::registry::{self, NewClient};
use crate::store::{Client, Grantee, Permission, Store};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Token and credential-exchange service"
)]
pub struct Cli {
    /// TOML configuration file (environment variables TESSERA_<SECTION>_<KEY> override it).
    #[arg(long, global = true, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP and gRPC servers.
    Serve,
    /// Apply pending database migrations.
    Migrate,
    /// Manage OAuth clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage which clients may act for users (RFC 8693 token exchange).
    #[command(subcommand)]
    Delegation(DelegationCommand),
    /// Manage datasets (data reached through a cloud role).
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Manage who may use which dataset.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// AWS helpers.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Keep Lake Formation permissions in step with the datasets.
    #[command(subcommand)]
    Lakeformation(LakeformationCommand),
}

#[derive(Debug, Subcommand)]
pub enum LakeformationCommand {
    /// Grant what each dataset's role lacks on its table (or LF-Tag
    /// expression), revoke what it holds beyond the dataset's permissions
    /// and what Tessera granted for datasets that are gone; prints the plan.
    /// Exits 1 when a change failed (the changes before it stay applied).
    Sync {
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Exchange a person's token for dataset credentials and print them as
    /// AWS `credential_process` JSON (use it from an AWS profile).
    CredentialProcess {
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        purpose: String,
        /// read or write.
        #[arg(long, default_value = "read", value_parser = parse_permission)]
        permission: Permission,
        /// File holding the person's token (default: $TESSERA_SUBJECT_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Type of that token: id_token, access_token or jwt.
        #[arg(long, default_value = "id_token")]
        token_type: String,
        /// Tessera's base URL (default: server.public_url).
        #[arg(long, env = "TESSERA_URL")]
        url: Option<String>,
        /// The data product's client id; its secret comes from $TESSERA_CLIENT_SECRET.
        #[arg(long, env = "TESSERA_CLIENT_ID")]
        client_id: String,
    },
}

/// The fields of `dataset create` and `dataset update`.
#[derive(Debug, clap::Args)]
pub struct DatasetArgs {
    /// Dataset id, e.g. sales.orders.
    id: String,
    #[arg(long)]
    tenant: String,
    /// IAM role assumed for this dataset's credentials.
    #[arg(long)]
    role_arn: String,
    #[arg(long)]
    glue_database: String,
    /// The Glue table (or use --lf-tags).
    #[arg(long, required_unless_present = "lf_tags", conflicts_with = "lf_tags")]
    glue_table: Option<String>,
    /// LF-Tag expression as JSON: [{"key": "domain", "values": ["sales"]}].
    #[arg(long)]
    lf_tags: Option<String>,
    /// S3 location prefix, s3://bucket/path/.
    #[arg(long)]
    s3_prefix: String,
    /// Allowed permission: read or write (repeatable).
    #[arg(long = "permission", required = true, value_parser = parse_permission)]
    permissions: Vec<Permission>,
    /// Allowed purpose (repeatable).
    #[arg(long = "purpose")]
    purposes: Vec<String>,
    /// Longest credential lifetime, 15m to 12h.
    #[arg(long, default_value = "1h")]
    max_duration: String,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    Create(DatasetArgs),
    List,
    Show {
        id: String,
    },
    /// Replace a dataset's fields.
    Update(DatasetArgs),
    /// Delete a dataset and its grants.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Let a user, a group or a whole tenant use a dataset.
    Add {
        #[arg(long)]
        dataset: String,
        /// Exactly one of --user, --group, --tenant.
        #[arg(long, group = "grantee")]
        user: Option<String>,
        #[arg(long, group = "grantee")]
        group: Option<String>,
        #[arg(long, group = "grantee")]
        tenant: Option<String>,
        #[arg(long, value_parser = parse_permission)]
        permission: Permission,
        /// Purpose the grant is for (repeatable; none: any the dataset allows).
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// How long the grant lasts, e.g. 30d (default: until revoked).
        #[arg(long)]
        expires_in: Option<String>,
    },
    List {
        #[arg(long)]
        dataset: Option<String>,
    },
    Revoke {
        id: String,
    },
}

fn parse_permission(s: &str) -> Result<Permission, String> {
    Permission::parse(s).ok_or_else(|| format!("{s:?} is not read or write"))
}

#[derive(Debug, Subcommand)]
pub enum DelegationCommand {
    /// Let a client exchange users' tokens for delegated tokens.
    Add {
        #[arg(long)]
        client: String,
        /// Audience the delegated tokens may be for (repeatable).
        #[arg(long = "audience", required_unless_present = "datasets")]
        audiences: Vec<String>,
        /// Scope the delegated tokens may carry, if the user holds it (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Another client whose actor_token this client may present (repeatable).
        #[arg(long = "actor")]
        actors: Vec<String>,
        /// Dataset the client may reach for users (repeatable).
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// Permission on those datasets: read or write (repeatable).
        #[arg(long = "permission", value_parser = parse_permission)]
        permissions: Vec<Permission>,
        /// How long the delegation lasts, e.g. 90d (default: until revoked).
        #[arg(long)]
        expires_in: Option<String>,
    },
    List {
        #[arg(long)]
        client: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client; prints its client_id and, for secret clients, the secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: String,
        /// Audience the client may obtain tokens for (repeatable).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Scope the client may obtain (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Token lifetime for this client, e.g. 5m (default: the service issuer's).
        #[arg(long)]
        ttl: Option<String>,
        /// JWK Set file with the client's public keys: the client then
        /// authenticates with private_key_jwt and gets no secret.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Issue no secret: the client authenticates only with a bound
        /// workload identity (see bind-workload).
        #[arg(long, conflicts_with = "jwks")]
        no_secret: bool,
    },
    List,
    Show {
        client_id: String,
    },
    Disable {
        client_id: String,
    },
    Enable {
        client_id: String,
    },
    /// Issue a new secret; the old one keeps working for the overlap.
    RotateSecret {
        client_id: String,
        /// How long the old secret stays valid (default: oauth.secret_rotation_overlap).
        #[arg(long)]
        overlap: Option<String>,
    },
    /// Let a workload identity (e.g. a Kubernetes service account)
    /// authenticate as this client, without a secret.
    BindWorkload {
        client_id: String,
        /// Trusted issuer (name or iss) of kind "workload".
        #[arg(long)]
        issuer: String,
        /// The token's subject, e.g. system:serviceaccount:NAMESPACE:NAME.
        #[arg(long)]
        subject: String,
    },
    UnbindWorkload {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add the next signing key (published now, signing after keys.rotation_delay).
    Rotate {
        #[arg(long, value_parser = ["human", "service"])]
        issuer: Option<String>,
    },
    /// Show each issuer's key schedule.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 and names the first broken record if it is broken.
    Verify,
    /// Show the newest records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: i64,
    },
}

/// The store, with failures naming the configuration key.
async fn connect(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    crate::store::connect(&config.store)
        .await
        .map_err(|e| anyhow::anyhow!("configuration key `store.url`: {e:#}"))
}

fn print(value: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&value).expect("json"));
}

/// Public view of a client (never a secret).
fn client_json(c: &Client) -> serde_json::Value {
    json!({
        "client_id": c.client_id,
        "name": c.name,
        "tenant": c.tenant,
        "audiences": c.audiences,
        "scopes": c.scopes,
        "token_ttl": c.token_ttl,
        "auth_method": if c.jwks.is_some() { "private_key_jwt" } else { "client_secret" },
        "jwks": c.jwks,
        "disabled": c.disabled,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text)
        .with_context(|| format!("{flag} {text:?} is not a duration like 5m"))?;
    if d.is_zero() {
        bail!("{flag} must be greater than zero");
    }
    Ok(d)
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = Config::load(cli.config.as_deref())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve => serve(config, clock).await,
        Command::Migrate => {
            connect(&config).await?;
            print(json!({"migrated": true}));
            Ok(0)
        }
        Command::Client(cmd) => {
            let store = connect(&config).await?;
            client(&config, store.as_ref(), clock.as_ref(), cmd).await
        }
        Command::Keys(cmd) => keys_command(&config, clock.as_ref(), cmd),
        Command::Delegation(cmd) => {
            let store = connect(&config).await?;
            delegation(store.as_ref(), clock.as_ref(), cmd).await
        }
        Command::Dataset(cmd) => {
            let store = connect(&config).await?;
            dataset(store.as_ref(), clock.now(), cmd).await
        }
        Command::Grant(cmd) => {
            let store = connect(&config).await?;
            grant(store.as_ref(), clock.now(), cmd).await
        }
        Command::Lakeformation(LakeformationCommand::Sync { dry_run }) => {
            let store = connect(&config).await?;
            let audit = crate::audit::AuditLog::spawn(store.clone(), config.audit.batch_max);
            let lf = crate::aws::lakeformation::AwsLakeFormation::new(&config.aws).await;
            use crate::data::sync::{Held, LEASE};
            // A sync that changes anything holds the same lease as the
            // servers' background loop, so the two never apply at once.
            let holder = format!("cli-{}", uuid::Uuid::new_v4());
            let held = Held {
                store: store.as_ref(),
                holder: &holder,
                ttl_secs: 300,
                clock: clock.as_ref(),
            };
            if !dry_run && !store.take_lease(LEASE, &holder, clock.now(), 300).await? {
                eprintln!(
                    "tessera: another Lake Formation sync holds the lease (a server's background loop?); try again later"
                );
                return Ok(1);
            }
            let datasets = store.list_datasets().await?;
            let report = crate::data::sync::run(
                &datasets,
                store.as_ref(),
                &lf,
                &audit,
                dry_run,
                clock.now_millis(),
                (!dry_run).then_some(&held),
            )
            .await;
            if !dry_run {
                store.release_lease(LEASE, &holder).await?;
            }
            let report = report?;
            let failed = report.error.clone();
            print(serde_json::to_value(report)?);
            match failed {
                Some(e) => {
                    eprintln!("tessera: Lake Formation sync stopped: {e}");
                    Ok(1)
                }
                None => Ok(0),
            }
        }
        Command::Aws(AwsCommand::CredentialProcess {
            dataset,
            purpose,
            permission,
            token_file,
            token_type,
            url,
            client_id,
        }) => {
            let token = match token_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => std::env::var("TESSERA_SUBJECT_TOKEN")
                    .context("no token: pass --token-file or set TESSERA_SUBJECT_TOKEN")?,
            };
            let secret = std::env::var("TESSERA_CLIENT_SECRET")
                .context("set TESSERA_CLIENT_SECRET to the data product's client secret")?;
            let base = url.unwrap_or_else(|| config.server.public_url.clone());
            let out = credential_process(
                &base,
                (&client_id, &secret),
                token.trim(),
                &token_type,
                &dataset,
                permission,
                &purpose,
            )
            .await?;
            println!("{out}");
            Ok(0)
        }
        Command::Audit(AuditCommand::Verify) => {
            let store = connect(&config).await?;
            let report = crate::audit::verify_chain(store.as_ref()).await?;
            let ok = report.first_broken.is_none();
            print(serde_json::to_value(&report)?);
            Ok(if ok { 0 } else { 1 })
        }
        Command::Audit(AuditCommand::Tail { limit }) => {
            let store = connect(&config).await?;
            let rows = store.audit_tail(limit.clamp(1, 10_000)).await?;
            print(serde_json::to_value(rows)?);
            Ok(0)
        }
    }
}

async fn serve(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<i32> {
    // Handlers first: a SIGTERM that arrives while the server starts (an
    // orchestrator giving up on a slow start) must stop it cleanly, not
    // kill it by the signal's default action.
    let shutdown = shutdown_signal()?;
    let server = crate::server::Server::start(config, clock).await?;
    let cfg = &server.app.config;
    eprintln!(
        "tessera: HTTP on http://{} (public URL {})",
        server.http_addr, cfg.server.public_url
    );
    eprintln!("tessera: gRPC ext_authz on {}", server.grpc_addr);
    eprintln!(
        "tessera: store {}; keys in {}",
        redact(&cfg.store.url),
        cfg.keys.dir.display()
    );
    eprintln!(
        "tessera: policy {} (version {})",
        cfg.policy
            .file
            .as_ref()
            .map_or("built-in".to_string(), |p| p.display().to_string()),
        server.app.policy.current().version
    );
    eprintln!(
        "tessera: create a first client with\n  tessera client create --name demo --tenant demo --audience internal --scope demo:read"
    );
    shutdown.await;
    eprintln!("tessera: shutting down");
    server.shutdown().await;
    Ok(0)
}

/// Hides a password in a database URL.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves at
/// the first of either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    })
}

async fn client(
    config: &Config,
    store: &dyn Store,
    clock: &dyn Clock,
    cmd: ClientCommand,
) -> anyhow::Result<i32> {
    let now = clock.now();
    match cmd {
        ClientCommand::Create {
            name,
            tenant,
            audiences,
            scopes,
            ttl,
            jwks,
            no_secret,
        } => {
            let token_ttl = ttl
                .map(|t| parse_duration("--ttl", &t).map(|d| d.as_secs() as i64))
                .transpose()?;
            let jwks = match jwks {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        serde_json::from_str::<JwkSet>(&text)
                            .with_context(|| format!("{} is not a JWK Set", path.display()))?,
                    )
                }
            };
            let new = NewClient {
                name,
                tenant,
                audiences,
                scopes,
                token_ttl,
                jwks,
                no_secret,
            };
            let (client, secret) = registry::create_client(store, config, new, now).await?;
            let mut out = client_json(&client);
            if no_secret {
                out["auth_method"] = json!("workload_identity");
            }
            if let Some(s) = secret {
                out["client_secret"] = json!(s);
            }
            print(out);
            Ok(0)
        }
        ClientCommand::List => {
            let clients = store.list_clients().await?;
            print(json!(clients.iter().map(client_json).collect::<Vec<_>>()));
            Ok(0)
        }
        ClientCommand::Show { client_id } => match store.get_client(&client_id).await? {
            Some(c) => {
                let mut out = client_json(&c);
                out["workload_identities"] =
                    serde_json::to_value(store.workload_bindings(Some(&client_id)).await?)?;
                out["delegations"] =
                    serde_json::to_value(store.delegations(Some(&client_id)).await?)?;
                print(out);
                Ok(0)
            }
            None => bail!("no client {client_id:?}"),
        },
        ClientCommand::BindWorkload {
            client_id,
            issuer,
            subject,
        } => {
            let b =
                registry::bind_workload(store, config, &client_id, &issuer, &subject, now).await?;
            print(serde_json::to_value(b)?);
            Ok(0)
        }
        ClientCommand::UnbindWorkload { issuer, subject } => {
            let iss = registry::workload_issuer(config, &issuer)?;
            if !store.unbind_workload(&iss, &subject).await? {
                bail!("{subject:?} from {iss} is not bound");
            }
            print(json!({"issuer": iss, "subject": subject, "unbound": true}));
            Ok(0)
        }
        ClientCommand::Disable { client_id } => set_disabled(store, &client_id, true, now).await,
        ClientCommand::Enable { client_id } => set_disabled(store, &client_id, false, now).await,
        ClientCommand::RotateSecret { client_id, overlap } => {
            let client = store
                .get_client(&client_id)
                .await?
                .with_context(|| format!("no client {client_id:?}"))?;
            let overlap = match overlap {
                Some(o) => parse_duration("--overlap", &o)?,
                None => config.oauth.secret_rotation_overlap,
            };
            let (secret, old_expires_at) =
                registry::rotate_secret(store, &client, overlap.as_secs() as i64, now).await?;
            print(
                json!({"client_id": client_id, "client_secret": secret, "previous_secret_expires_at": old_expires_at}),
            );
            Ok(0)
        }
    }
}

async fn delegation(
    store: &dyn Store,
    clock: &dyn Clock,
    cmd: DelegationCommand,
) -> anyhow::Result<i32> {
    let now = clock.now();
    match cmd {
        DelegationCommand::Add {
            client,
            audiences,
            scopes,
            actors,
            datasets,
            permissions,
            expires_in,
        } => {
            let expires_at = expires_in
                .map(|e| parse_duration("--expires-in", &e).map(|d| now + d.as_secs() as i64))
                .transpose()?;
            let new = registry::NewDelegation {
                client_id: client,
                audiences,
                scopes,
                actors,
                datasets,
                permissions,
                expires_at,
            };
            let d = registry::add_delegation(store, new, now).await?;
            print(serde_json::to_value(d)?);
        }
        DelegationCommand::List { client } => {
            print(serde_json::to_value(
                store.delegations(client.as_deref()).await?,
            )?);
        }
        DelegationCommand::Revoke { id } => {
            if !store.remove_delegation(&id).await? {
                bail!("no delegation {id:?}");
            }
            print(json!({"id": id, "revoked": true}));
        }
    }
    Ok(0)
}

fn new_dataset(a: DatasetArgs) -> anyhow::Result<registry::NewDataset> {
    let lf_tag_expression = a
        .lf_tags
        .map(|t| serde_json::from_str(&t).context("--lf-tags is not JSON"))
        .transpose()?;
    Ok(registry::NewDataset {
        id: a.id,
        tenant: a.tenant,
        role_arn: a.role_arn,
        glue_database: a.glue_database,
        glue_table: a.glue_table,
        lf_tag_expression,
        s3_prefix: a.s3_prefix,
        permissions: a.permissions,
        purposes: a.purposes,
        max_duration_secs: parse_duration("--max-duration", &a.max_duration)?.as_secs() as i64,
    })
}

async fn dataset(store: &dyn Store, now: i64, cmd: DatasetCommand) -> anyhow::Result<i32> {
    match cmd {
        DatasetCommand::Create(a) => {
            let d = registry::create_dataset(store, new_dataset(a)?, now).await?;
            print(serde_json::to_value(d)?);
        }
        DatasetCommand::Update(a) => {
            let d = registry::update_dataset(store, new_dataset(a)?, now).await?;
            print(serde_json::to_value(d)?);
        }
        DatasetCommand::List => print(serde_json::to_value(store.list_datasets().await?)?),
        DatasetCommand::Show { id } => match store.get_dataset(&id).await? {
            Some(d) => {
                let mut out = serde_json::to_value(d)?;
                out["grants"] = serde_json::to_value(store.grants(Some(&id)).await?)?;
                print(out);
            }
            None => bail!("no dataset {id:?}"),
        },
        DatasetCommand::Delete { id } => {
            if !store.delete_dataset(&id).await? {
                bail!("no dataset {id:?}");
            }
            print(json!({"id": id, "deleted": true}));
        }
    }
    Ok(0)
}

async fn grant(store: &dyn Store, now: i64, cmd: GrantCommand) -> anyhow::Result<i32> {
    match cmd {
        GrantCommand::Add {
            dataset,
            user,
            group,
            tenant,
            permission,
            purposes,
            expires_in,
        } => {
            let (grantee_type, grantee) = match (user, group, tenant) {
                (Some(u), None, None) => (Grantee::User, u),
                (None, Some(g), None) => (Grantee::Group, g),
                (None, None, Some(t)) => (Grantee::Tenant, t),
                _ => bail!("name exactly one of --user, --group, --tenant"),
            };
            let expires_at = expires_in
                .map(|e| parse_duration("--expires-in", &e).map(|d| now + d.as_secs() as i64))
                .transpose()?;
            let g = registry::add_grant(
                store,
                registry::NewGrant {
                    dataset_id: dataset,
                    grantee_type,
                    grantee,
                    permission,
                    purposes,
                    expires_at,
                },
                now,
            )
            .await?;
            print(serde_json::to_value(g)?);
        }
        GrantCommand::List { dataset } => print(serde_json::to_value(
            store.grants(dataset.as_deref()).await?,
        )?),
        GrantCommand::Revoke { id } => {
            if !store.remove_grant(&id).await? {
                bail!("no grant {id:?}");
            }
            print(json!({"id": id, "revoked": true}));
        }
    }
    Ok(0)
}

/// One token exchange for dataset credentials, answered in the shape the
/// AWS CLI and SDKs expect from a `credential_process` (Version 1).
async fn credential_process(
    base: &str,
    (client_id, secret): (&str, &str),
    token: &str,
    token_type: &str,
    dataset: &str,
    permission: Permission,
    purpose: &str,
) -> anyhow::Result<serde_json::Value> {
    let subject_type = format!("urn:ietf:params:oauth:token-type:{token_type}");
    let resource = format!(
        "{}{dataset}",
        crate::oauth::grants::aws_credentials::DATASET_URN
    );
    let form = [
        (
            "grant_type",
            crate::oauth::grants::token_exchange::GRANT_TYPE,
        ),
        ("subject_token", token),
        ("subject_token_type", &subject_type),
        (
            "requested_token_type",
            crate::oauth::grants::aws_credentials::AWS_CREDENTIALS,
        ),
        ("resource", &resource),
        ("scope", permission.as_str()),
        ("purpose", purpose),
    ];
    let body = serde_urlencoded::to_string(form)?;
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?
        .post(format!("{}/oauth2/token", base.trim_end_matches('/')))
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let answer: serde_json::Value = serde_json::from_str(&resp.text().await?)
        .with_context(|| format!("Tessera answered {status} without JSON"))?;
    if !status.is_success() {
        bail!(
            "Tessera refused ({status}): {} {} {}",
            answer["error"].as_str().unwrap_or("?"),
            answer["reason"].as_str().unwrap_or(""),
            answer["error_description"].as_str().unwrap_or("")
        );
    }
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the answer has no {name}"))
    };
    Ok(json!({
        "Version": 1,
        "AccessKeyId": field("access_key_id")?,
        "SecretAccessKey": field("secret_access_key")?,
        "SessionToken": field("session_token")?,
        "Expiration": field("expiration")?,
    }))
}

async fn set_disabled(
    store: &dyn Store,
    client_id: &str,
    disabled: bool,
    now: i64,
) -> anyhow::Result<i32> {
    if !store.set_disabled(client_id, disabled, now).await? {
        bail!("no client {client_id:?}");
    }
    print(client_json(
        &store
            .get_client(client_id)
            .await?
            .context("client vanished")?,
    ));
    Ok(0)
}

fn keys_command(config: &Config, clock: &dyn Clock, cmd: KeysCommand) -> anyhow::Result<i32> {
    let now = clock.now();
    let grace = |kind: IssuerKind| {
        let cfg = match kind {
            IssuerKind::Human => &config.issuers.human,
            IssuerKind::Service => &config.issuers.service,
        };
        cfg.max_token_ttl.as_secs() as i64 + LEEWAY
    };
    match cmd {
        KeysCommand::Rotate { issuer } => {
            let kinds: Vec<IssuerKind> = match issuer.as_deref() {
                Some(name) => {
                    vec![IssuerKind::parse(name).context("--issuer must be human or service")?]
                }
                None => IssuerKind::ALL.to_vec(),
            };
            let mut out = Vec::new();
            for kind in kinds {
                let dir = config.keys.dir.join(kind.name());
                let file = keys::rotate(
                    &dir,
                    config.keys.algorithm,
                    now,
                    config.keys.rotation_delay.as_secs() as i64,
                    grace(kind),
                )?;
                out.push(json!({"issuer": kind.name(), "kid": file.kid, "alg": file.alg, "activates_at": file.activates_at}));
            }
            print(json!(out));
            Ok(0)
        }
        KeysCommand::List => {
            let mut out = serde_json::Map::new();
            for kind in IssuerKind::ALL {
                let ring = keys::KeyRing::from_files(
                    keys::read_dir(&config.keys.dir.join(kind.name()))?,
                    grace(kind),
                )?;
                let signing = ring.signing_at(now).map(|k| k.kid.clone());
                let list: Vec<_> = ring
                    .keys
                    .iter()
                    .map(|k| {
                        let state = if Some(&k.kid) == signing.as_ref() {
                            "current"
                        } else if k.activates_at > now {
                            "next"
                        } else if k.is_published(now) {
                            "retired"
                        } else {
                            "expired"
                        };
                        json!({"kid": k.kid, "alg": k.alg, "state": state, "activates_at": k.activates_at, "retires_at": k.retires_at, "verify_until": k.verify_until})
                    })
                    .collect();
                out.insert(kind.name().into(), json!(list));
            }
            print(serde_json::Value::Object(out));
            Ok(0)
        }
    }
}
