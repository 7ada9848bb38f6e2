//! Operations commands (`trackgate outbox …`, `trackgate journal …`): they open the outbox or
//! journal file directly when no gateway holds it, and otherwise ask the running gateway's
//! admin listener (with `admin.token`). Output is pretty JSON (or a line of text for changes).

use uuid::Uuid;

use crate::config::{Config, SinkConfig};
use crate::crm::Journal;
use crate::crm::journal::JournalError;
use crate::outbox::nats::{NatsMetrics, Role};
use crate::outbox::{NatsOutbox, Outbox, OutboxError, OutboxMetrics, RedbOutbox};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the running gateway's admin listener at {url}: {problem}")]
    Admin { url: String, problem: String },
    #[error("cannot encode the answer: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the configured sink is not the journal (crm.sink); the journal has nothing to show")]
    NoJournal,
    #[error(
        "outbox.backend is not \"nats\"; set it (and [nats] servers) to use the fleet's streams"
    )]
    NotNats,
    #[error(
        "{} is in use, and no running gateway is recorded in {}\nfix: run the command with the configuration of the gateway that holds the file, or stop the process that holds it",
        file.display(),
        data_dir.display()
    )]
    HeldByUnknown {
        file: std::path::PathBuf,
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxAction {
    Stats,
    Pending { limit: usize },
    Dead { limit: usize },
    Retry(Uuid),
    Skip(Uuid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalAction {
    List { limit: usize },
    Show(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// `status` or `run MAILBOX` of the catch-up sweep or synchronisation.
pub enum MailboxAction {
    Status,
    Run(String),
}

fn pretty<T: serde::Serialize>(value: &T) -> Result<String, OpsError> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// What `trackgate check` prints once the configuration is valid: the configuration resolved
/// (stdout), then what the directory check found (stderr), or why the directory is not usable.
#[derive(Debug)]
pub struct CheckReport {
    /// The configuration as TOML with every default filled in, secrets redacted.
    pub resolved: String,
    /// The summary lines, or the directory file's problem.
    pub directory: Result<String, OpsError>,
}

/// `trackgate check`: validates a configuration (without a file, the embedded defaults plus the
/// environment's overrides: what `serve` would run with) as a start would, then the directory file,
/// which is part of what must be right before a deploy. Dataverse is not contacted: `check`
/// must work offline.
pub fn check(path: Option<&std::path::Path>) -> Result<CheckReport, OpsError> {
    let (raw, config) = Config::load_with(path, &[])?;
    crate::app::settings::check(&config)?;
    let valid = match path {
        Some(path) => format!("configuration {} is valid\n", path.display()),
        None => "the embedded defaults, with the environment's TRACKGATE_SECTION__KEY overrides, are valid\n".to_owned(),
    };
    let directory = match &config.directory.dataverse {
        Some(dv) => Ok(format!(
            "{valid}directory: from Dataverse {} (replica {}), loaded at start\n",
            dv.connection.url,
            dv.replica_file.display()
        )),
        None => crate::app::settings::file_source(&config)
            .load()
            .map(|d| format!("{valid}directory: {}\n", d.counts()))
            .map_err(OpsError::from),
    };
    let caveats: String = crate::app::settings::caveats(&config)
        .iter()
        .map(|c| format!("note: {c}\n"))
        .collect();
    Ok(CheckReport {
        resolved: raw.to_redacted_toml(),
        directory: directory.map(|d| d + &caveats),
    })
}

/// `trackgate check --online`: the configured Dataverse environment contacted as delivery
/// would (`crm::online`). Findings in order; `None` when the sink is not Dataverse.
pub async fn check_online(
    path: Option<&std::path::Path>,
) -> Result<Option<Vec<crate::crm::online::Finding>>, OpsError> {
    let (_, config) = Config::load_with(path, &[])?;
    crate::app::settings::check(&config)?;
    let Some((target, expected)) = crate::app::settings::online_check(&config) else {
        return Ok(None);
    };
    let http = reqwest::Client::builder()
        .timeout(config.delivery.request_timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| OpsError::Admin {
            url: target.url.clone(),
            problem: format!("cannot build an HTTP client: {e}"),
        })?;
    Ok(Some(
        crate::crm::online::run(&http, &target, &expected).await,
    ))
}

/// Where a command's answer came from, said on stderr so that nobody mistakes another
/// gateway's data for their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The file itself (no gateway held it).
    File(std::path::PathBuf),
    /// The gateway recorded in the data directory, which holds the file.
    Gateway {
        admin: std::net::SocketAddr,
        pid: u32,
    },
    /// The fleet's JetStream stream.
    Nats { stream: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Gateway { admin, pid } => write!(f, "gateway at http://{admin} (pid {pid})"),
            Source::Nats { stream } => write!(f, "NATS stream {stream}"),
        }
    }
}

/// Runs an outbox command; returns what to print and where it came from.
pub fn outbox(config: &Config, action: OutboxAction) -> Result<(String, Source), OpsError> {
    let mut registry = prometheus_client::registry::Registry::default();
    if let Some(settings) = crate::app::settings::nats(config) {
        // The fleet's streams, read and changed directly: the same from any machine, whether
        // or not a gateway runs here.
        let source = Source::Nats {
            stream: settings.stream.clone(),
        };
        let outbox = nats_runtime()?.block_on(NatsOutbox::open(
            settings,
            NatsMetrics::register(&mut registry),
            OutboxMetrics::register(&mut registry),
            Role::Operator,
        ))?;
        return Ok((outbox_action(&outbox, action)?, source));
    }
    match RedbOutbox::open(
        &config.outbox.file,
        crate::app::settings::outbox(&config.outbox),
        OutboxMetrics::register(&mut registry),
    ) {
        Ok(outbox) => Ok((
            outbox_action(&outbox, action)?,
            Source::File(config.outbox.file.clone()),
        )),
        Err(OutboxError::InUse { .. }) => {
            let (method, path) = match action {
                OutboxAction::Stats => ("GET", "/outbox/stats".to_owned()),
                OutboxAction::Pending { limit } => {
                    ("GET", format!("/outbox/pending?limit={limit}"))
                }
                OutboxAction::Dead { limit } => ("GET", format!("/outbox/dead?limit={limit}")),
                OutboxAction::Retry(id) => ("POST", format!("/outbox/retry/{id}")),
                OutboxAction::Skip(id) => ("POST", format!("/outbox/skip/{id}")),
            };
            admin(config, &config.outbox.file, method, &path)
        }
        Err(e) => Err(e.into()),
    }
}

fn outbox_action(outbox: &dyn Outbox, action: OutboxAction) -> Result<String, OpsError> {
    Ok(match action {
        OutboxAction::Stats => pretty(&outbox.stats()?)?,
        OutboxAction::Pending { limit } => pretty(&outbox.pending(limit)?)?,
        OutboxAction::Dead { limit } => pretty(&outbox.dead_letters(limit)?)?,
        OutboxAction::Retry(id) => {
            outbox.retry(id)?;
            format!("retry: {id} is pending again\n")
        }
        OutboxAction::Skip(id) => {
            outbox.skip(id)?;
            format!("skip: {id} dropped without delivery\n")
        }
    })
}

fn nats_runtime() -> Result<tokio::runtime::Runtime, OpsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OpsError::Outbox(OutboxError::Thread(e)))
}

/// `trackgate nats setup`: creates or updates the fleet's streams and consumer.
pub fn nats_setup(config: &Config) -> Result<String, OpsError> {
    let Some(settings) = crate::app::settings::nats(config) else {
        return Err(OpsError::NotNats);
    };
    let (Some(leases), Some(bucket)) = (
        crate::app::settings::leases(config),
        crate::app::settings::directory_bucket(config),
    ) else {
        return Err(OpsError::NotNats);
    };
    let fleet = |e: String| OpsError::Outbox(crate::outbox::nats::NatsError::Request(e).into());
    nats_runtime()?.block_on(async {
        let jetstream = crate::outbox::nats::setup(&settings)
            .await
            .map_err(|e| OpsError::Outbox(e.into()))?;
        crate::fleet::setup(&jetstream, &leases.bucket, leases.ttl, settings.replicas)
            .await
            .map_err(fleet)?;
        crate::fleet::directory::setup(&jetstream, &bucket, settings.replicas)
            .await
            .map_err(fleet)
    })?;
    Ok(format!(
        "ready: stream {} ({}.>), dead letters {} ({}.>), consumer {}, leases {}, {} replica(s)\n",
        settings.stream,
        settings.subject,
        settings.dead_stream,
        settings.dead_subject,
        settings.consumer,
        leases.bucket,
        settings.replicas
    ))
}

/// Runs a journal command; returns what to print and where it came from.
pub fn journal(config: &Config, action: JournalAction) -> Result<(String, Source), OpsError> {
    let SinkConfig::Journal { file } = &config.crm.sink else {
        return Err(OpsError::NoJournal);
    };
    match Journal::open(file) {
        Ok(journal) => {
            let text = match action {
                JournalAction::List { limit } => pretty(&journal.list(limit)?)?,
                JournalAction::Show(id) => pretty(&journal.show(id)?)?,
            };
            Ok((text, Source::File(file.clone())))
        }
        Err(JournalError::InUse { .. }) => {
            let path = match action {
                JournalAction::List { limit } => format!("/journal?limit={limit}"),
                JournalAction::Show(id) => format!("/journal/{id}"),
            };
            admin(config, file, "GET", &path)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a command prints, and where its answer came from.
pub type Answer = Result<(String, Source), OpsError>;

/// Runs a catch-up command. The sweep lives in the running gateway, so it is always asked.
pub fn catchup(config: &Config, action: MailboxAction) -> Result<(String, Source), OpsError> {
    mailbox_command(config, action, "catchup")
}

/// `trackgate sync status|run MAILBOX`, through the running gateway.
pub fn sync(config: &Config, action: MailboxAction) -> Result<(String, Source), OpsError> {
    mailbox_command(config, action, "sync")
}

/// `GET /{base}` or `POST /{base}/run/{mailbox}` of the running gateway that holds
/// `{base}.redb`.
fn mailbox_command(
    config: &Config,
    action: MailboxAction,
    base: &str,
) -> Result<(String, Source), OpsError> {
    let (method, path) = match &action {
        MailboxAction::Status => ("GET", format!("/{base}")),
        MailboxAction::Run(mailbox) => (
            "POST",
            format!(
                "/{base}/run/{}",
                crate::common::text::percent_encode(mailbox, b"@.-_")
            ),
        ),
    };
    let state = config.storage.data_dir.join(format!("{base}.redb"));
    admin(config, &state, method, &path)
}

/// One request to the admin listener of the gateway recorded in the data directory: the one
/// that holds `file`. The configured admin address is not asked, since another gateway on the
/// machine may listen there.
fn admin(
    config: &Config,
    file: &std::path::Path,
    method: &str,
    path: &str,
) -> Result<(String, Source), OpsError> {
    let data_dir = &config.storage.data_dir;
    let Some(record) = crate::app::record::live(data_dir) else {
        return Err(OpsError::HeldByUnknown {
            file: file.to_path_buf(),
            data_dir: data_dir.clone(),
        });
    };
    let source = Source::Gateway {
        admin: record.admin,
        pid: record.pid,
    };
    let url = format!("http://{}{path}", record.admin);
    let fail = |problem: String| OpsError::Admin {
        url: url.clone(),
        problem,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = match method {
            "POST" => client.post(&url),
            _ => client.get(&url),
        };
        if let Some(token) = &config.admin.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot reach it ({e}); is the gateway running with this configuration?"
                ))
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| fail(e.to_string()))?;
        if status.is_success() {
            Ok((text, source))
        } else {
            Err(fail(format!("HTTP {}: {}", status.as_u16(), text.trim())))
        }
    })
}
