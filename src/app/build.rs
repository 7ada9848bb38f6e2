//! One constructor per stage, each from its settings: the embedded upstream, the directory and
//! its first load, the sink, inspection feeding the pipeline, the listeners and the directory's
//! watcher. `start` calls them in flow order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{ADMIN_LISTENER, AppError, PROXY_LISTENER, settings};
use crate::catchup::{CatchupMetrics, Marks, Sweeper};
use crate::common::BehindTraffic;
use crate::config::SignIn;
use crate::config::{Config, SinkConfig, UpstreamTarget};
use crate::crm::mapping::FieldTable;
use crate::crm::{DataverseSettings, DataverseSink, Journal, Sink, WebhookSettings, WebhookSink};
use crate::delivery::Enrichment as _;
use crate::directory::dataverse::{DataverseSource, DataverseSourceSettings};
use crate::directory::{DirectoryHandle, DirectoryMetrics, FileSource, Overlay};
use crate::exchange::{ExchangeAuth, ExchangeClient, ExchangeSettings};
use crate::fleet::directory::{DIRECTORY_LEASE, SharedDirectory};
use crate::fleet::{FleetMetrics, Leases, Ownership};
use crate::inspect::worker::{self, InspectMetrics, RecentObservations};
use crate::options::{
    DocumentReader, History, OptionsPage, OptionsParts, OptionsStore, Saver, Target,
};
use crate::outbox::nats::{NatsMetrics, Role};
use crate::outbox::{NatsOutbox, Outbox, OutboxMetrics, RedbOutbox};
use crate::pipeline::Pipeline;
use crate::proxy::ProxyMetrics;
use crate::proxy::capture::{Budget, Capture, CaptureSink, DropHook, ResponseUse};
use crate::proxy::route::RouteClass;
use crate::proxy::server;
use crate::rules::Engine;
use crate::simulate::mailbox::Store;
use crate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};

/// The built-in Exchange simulator, when it is the upstream (embedded defaults,
/// docs/architecture.md §2.10).
pub(super) async fn embedded_upstream(
    config: &Config,
) -> Result<Option<ExchangeSimulator>, AppError> {
    match config.upstreams.target {
        UpstreamTarget::Simulator => {
            // The stateful store: EWS and Graph by meaning, mail flow between its mailboxes.
            let store = Store::embedded()
                .map_err(|e| AppError::Simulator(std::io::Error::other(e.to_string())))?;
            let options = SimulatorOptions::new("embedded", FixtureSet::embedded()?)
                .with_store(Arc::new(store));
            let sim = ExchangeSimulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), options)
                .await
                .map_err(AppError::Simulator)?;
            Ok(Some(sim))
        }
        UpstreamTarget::Remote { .. } => Ok(None),
    }
}

/// The Exchange client enrichment uses: the configured `[exchange]`, or else the built-in
/// simulator when it is the upstream, so nothing is dead-lettered for want of one.
pub(super) fn exchange_client(
    config: &Config,
    simulator: Option<&ExchangeSimulator>,
    http: &reqwest::Client,
) -> Option<Arc<ExchangeClient>> {
    let settings = match (&config.exchange, simulator) {
        (Some(e), _) => settings::exchange(e),
        (None, Some(sim)) => ExchangeSettings {
            ews_url: Some(format!("{}/EWS/Exchange.asmx", sim.url())),
            graph_url: Some(sim.url()),
            // The embedded simulator asks for no credentials; this names the service account
            // its store knows, so impersonation reads as it would against Exchange.
            auth: ExchangeAuth::Basic {
                username: "CONTOSO\\svc-trackgate".into(),
                password: crate::common::Secret::new("Example-Pa55-svc"),
            },
            timeout: config.delivery.request_timeout,
            concurrency: crate::config::EXCHANGE_CONCURRENCY,
        },
        (None, None) => return None,
    };
    Some(Arc::new(ExchangeClient::new(http.clone(), settings)))
}

/// Whether the catch-up sweep runs — `[catchup] enabled`, or by default whenever there is an
/// Exchange service client (EWS or Graph, configured, or the built-in simulator) — and if so,
/// the marks it reads.
pub(super) fn catchup_marks(
    config: &Config,
    client: Option<&Arc<ExchangeClient>>,
) -> Option<Arc<Marks>> {
    let can_sweep = client.is_some_and(|c| c.can_sweep());
    let enabled = config.catchup.enabled.unwrap_or(can_sweep);
    if enabled && !can_sweep {
        tracing::warn!(
            "catch-up is enabled but no Exchange service client is configured ([exchange] ews_url or graph_url)"
        );
    }
    (enabled && can_sweep).then(|| Arc::new(Marks::default()))
}

/// The catch-up sweep, when [`catchup_marks`] gave it marks to read, and the runtime it runs
/// on: one thread of its own behind the traffic, so a sweep's parsing and rules never take a
/// core from the proxy's workers.
pub(super) fn catchup(
    config: &Config,
    client: Option<&Arc<ExchangeClient>>,
    marks: Option<&Arc<Marks>>,
    directory: &DirectoryHandle,
    pipeline: &Arc<Pipeline>,
    ownership: Option<Arc<dyn Ownership>>,
    registry: &mut Registry,
) -> Result<Option<(Arc<Sweeper>, BehindTraffic)>, AppError> {
    let (Some(client), Some(marks)) = (client, marks) else {
        return Ok(None);
    };
    let sweeper = Sweeper::new(
        client.clone(),
        directory.clone(),
        pipeline.clone(),
        settings::catchup(config),
        CatchupMetrics::register(registry),
        marks.clone(),
        ownership,
    )
    .map_err(|e| AppError::Catchup(e.to_string()))?;
    let runtime = BehindTraffic::start("trackgate-catchup", 1)
        .map_err(|e| AppError::Catchup(format!("cannot start its thread: {e}")))?;
    Ok(Some((sweeper, runtime)))
}

/// Synchronisation, when it can run — `[sync] enabled`, or by default whenever the directory
/// comes from Dataverse and an EWS client exists — and the runtime it runs on (one thread
/// behind the traffic).
pub(super) fn sync(
    config: &Config,
    dataverse: Option<&Arc<DataverseSource>>,
    client: Option<&Arc<ExchangeClient>>,
    fields: &crate::crm::mapping::FieldTable,
    ownership: Option<Arc<dyn Ownership>>,
    refresher: (DirectoryHandle, Arc<DirectoryMetrics>),
    registry: &mut Registry,
) -> Result<Option<(Arc<crate::sync::Syncer>, BehindTraffic)>, AppError> {
    let ews = client.filter(|c| c.ews_configured());
    let possible = dataverse.is_some() && ews.is_some();
    let enabled = config.sync.enabled.unwrap_or(possible);
    if enabled && !possible {
        tracing::warn!(
            "[sync] is enabled but needs the directory from Dataverse ([directory] source = \"dataverse\") and [exchange] ews_url; it stays off"
        );
    }
    let (true, Some(dataverse), Some(client)) = (enabled, dataverse, ews) else {
        return Ok(None);
    };
    let syncer = crate::sync::Syncer::new(
        dataverse.clone(),
        client.clone(),
        crate::sync::SyncFields::from_table(fields),
        settings::sync(config),
        crate::sync::SyncMetrics::register(registry),
        ownership,
        Some(refresher),
    )
    .map_err(|e| AppError::Sync(e.to_string()))?;
    let runtime = BehindTraffic::start("trackgate-sync", 1)
        .map_err(|e| AppError::Sync(format!("cannot start its thread: {e}")))?;
    Ok(Some((syncer, runtime)))
}

/// The client for every outbound service call (CRM, webhook, Exchange enrichment).
pub(super) fn service_client(config: &Config) -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .timeout(config.delivery.request_timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("trackgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AppError::HttpClient(e.to_string()))
}

/// The directory the rules read, and where it comes from.
pub(super) struct Directory {
    pub handle: DirectoryHandle,
    pub metrics: Arc<DirectoryMetrics>,
    /// The file source (also what a reload swaps when the directory is a file).
    pub file: Arc<Mutex<FileSource>>,
    pub dataverse: Option<Arc<DataverseSource>>,
}

/// Loads the directory: the file, or the Dataverse replica followed by a first refresh that
/// is waited for up to `startup_wait` and then left to finish in the background.
pub(super) async fn directory(
    config: &Config,
    dataverse_settings: Option<DataverseSourceSettings>,
    overlay: Overlay,
    http: &reqwest::Client,
    registry: &mut Registry,
) -> Result<Directory, AppError> {
    let metrics = Arc::new(DirectoryMetrics::register(registry));
    let mut file = settings::file_source(config);
    file.settings.overlay = overlay.clone();
    let (snapshot, dataverse) = match dataverse_settings {
        None => (file.load()?, None),
        Some(mut source_settings) => {
            source_settings.directory.overlay = overlay;
            let (dataverse, replica) = DataverseSource::open(http.clone(), source_settings)
                .map_err(AppError::DirectorySource)?;
            let snapshot = match replica {
                Some(r) => r,
                None => crate::directory::dataverse::empty_directory()
                    .map_err(|e| AppError::DirectorySource(e.into()))?,
            };
            (snapshot, Some(Arc::new(dataverse)))
        }
    };
    metrics.loaded(&snapshot);
    tracing::info!(counts = %snapshot.counts(), "directory loaded");
    let handle = DirectoryHandle::new(snapshot);
    if let (Some(source), Some(dv)) = (&dataverse, &config.directory.dataverse) {
        first_dataverse_load(source, &handle, &metrics, dv.startup_wait).await;
    }
    Ok(Directory {
        handle,
        metrics,
        file: Arc::new(Mutex::new(file)),
        dataverse,
    })
}

async fn first_dataverse_load(
    source: &Arc<DataverseSource>,
    handle: &DirectoryHandle,
    metrics: &Arc<DirectoryMetrics>,
    startup_wait: std::time::Duration,
) {
    // The first load runs as its own task: waited for up to `startup_wait`, then left to
    // finish in the background while the replica (or nothing) serves.
    let first = tokio::spawn({
        let (source, handle, metrics) = (source.clone(), handle.clone(), metrics.clone());
        async move { crate::directory::dataverse::refresh_now(&source, &handle, &metrics).await }
    });
    let serving = if source.status().from_replica {
        "serving the persisted replica"
    } else {
        "nothing is tracked until it answers (no replica yet)"
    };
    match tokio::time::timeout(startup_wait, first).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "Dataverse not loaded at start; {serving}");
        }
        Ok(Err(_)) => tracing::warn!("the first directory load stopped; {serving}"),
        Err(_) => tracing::warn!(
            wait = ?startup_wait,
            "Dataverse still loading after startup_wait; {serving} meanwhile"
        ),
    }
    metrics.source_status(&source.status());
}

/// Keeps the directory current: the Dataverse source's refresh schedule, or the file watcher.
pub(super) fn keep_directory_fresh(
    directory: &Directory,
    shared: Option<SharedDirectory>,
    poll_interval: std::time::Duration,
    stopped: watch::Receiver<bool>,
) {
    if let Some(shared) = shared {
        tokio::spawn(shared.run(stopped));
        return;
    }
    match &directory.dataverse {
        Some(dataverse) => {
            tokio::spawn(crate::directory::dataverse::keep_fresh(
                dataverse.clone(),
                directory.handle.clone(),
                directory.metrics.clone(),
                stopped,
            ));
        }
        None => {
            let (handle, metrics) = (directory.handle.clone(), directory.metrics.clone());
            tokio::spawn(crate::directory::file::watch(
                directory.file.clone(),
                poll_interval,
                stopped,
                move |loaded| {
                    if let Err(error) = handle.apply(loaded, &metrics) {
                        tracing::error!(%error, "directory file changed but is not valid; keeping the last snapshot");
                    }
                },
            ));
        }
    }
}

/// The configured sink (and the journal, when it is the sink, for the admin endpoints).
pub(super) fn sink(
    config: &Config,
    fields: &FieldTable,
    http: &reqwest::Client,
) -> Result<(Sink, Option<Arc<Journal>>), AppError> {
    Ok(match &config.crm.sink {
        SinkConfig::Journal { file } => {
            let journal = Arc::new(Journal::open(file)?);
            (Sink::Journal(journal.clone()), Some(journal))
        }
        SinkConfig::Dataverse {
            url,
            api_path,
            credentials,
            act_as_owner,
            max_requests_per_window,
        } => (
            Sink::Dataverse(Box::new(DataverseSink::new(
                http.clone(),
                DataverseSettings {
                    url: url.clone(),
                    api_path: api_path.clone(),
                    credentials: credentials.clone(),
                    act_as_owner: *act_as_owner,
                    batch_size: config.delivery.batch_size,
                    concurrency: config.delivery.concurrency,
                    timeout: config.delivery.request_timeout,
                    probe_timeout: config.delivery.probe_timeout,
                    columns: fields.email,
                    max_requests_per_window: *max_requests_per_window,
                },
            ))),
            None,
        ),
        SinkConfig::Webhook { url, secret } => (
            Sink::Webhook(WebhookSink::new(
                http.clone(),
                WebhookSettings {
                    url: url.clone(),
                    secret: secret.clone(),
                    timeout: config.delivery.request_timeout,
                    probe_timeout: config.delivery.probe_timeout,
                },
            )),
            None,
        ),
    })
}

/// Inspection: the worker threads that turn the proxy's copies into observations and feed them
/// to the pipeline, each with its own queue, and the capture sink that hands each copy to its
/// mailbox's worker. `None` when inspection is off.
pub(super) fn inspection(
    config: &Config,
    pipeline: Arc<Pipeline>,
    metrics: Arc<InspectMetrics>,
    recent: Arc<RecentObservations>,
    proxy_metrics: &ProxyMetrics,
    drop_hook: Option<DropHook>,
) -> Result<Option<Arc<CaptureSink>>, AppError> {
    let i = &config.inspect;
    if !i.enabled {
        return Ok(None);
    }
    let budget = Budget::new(i.memory_budget);
    let workers = settings::inspect_workers(i);
    let mut queues = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, captures) = tokio::sync::mpsc::channel(i.queue);
        let pipeline = pipeline.clone();
        worker::spawn(
            captures,
            budget.clone(),
            settings::inspect(i),
            metrics.clone(),
            recent.clone(),
            move |observation| {
                pipeline.observe(observation);
            },
        )
        .map_err(AppError::Worker)?;
        queues.push(queue);
    }
    metrics
        .workers
        .set(i64::try_from(workers).unwrap_or(i64::MAX));
    tracing::debug!(workers, "inspection workers started");
    Ok(Some(Arc::new(
        CaptureSink::new(
            queues,
            i.capture_limit,
            budget,
            proxy_metrics.captures.clone(),
            Some(judge_request),
            crate::inspect::identity::affinity,
        )
        .with_drop_hook(drop_hook),
    )))
}

/// With catch-up on, a dropped copy marks its mailbox (from the request's HTTP-level hints, as
/// inspection would have found it) to be swept next.
pub(super) fn drop_hook(marks: Option<&Arc<Marks>>, engine: &Arc<Engine>) -> Option<DropHook> {
    let (marks, engine) = (marks?.clone(), engine.clone());
    Some(DropHook(Arc::new(move |capture: &Capture| {
        let path = capture.path_and_query.split('?').next().unwrap_or("");
        let auth = capture
            .connection_auth
            .as_ref()
            .and_then(|v| v.to_str().ok());
        let principal =
            crate::inspect::identity::http_mailbox(&capture.request_headers, path, auth);
        if let Some(address) = principal.and_then(|p| engine.mailbox_address(&p)) {
            marks.mark(&address, "dropped");
            marks.saw(&address);
        }
    })))
}

/// What inspection makes of an exchange, from its request: an EWS `GetStreamingEvents`
/// response never ends, and an EWS operation inspection reads nothing from yields nothing, so
/// neither response is copied. Runs on the proxy's worker for every copied EWS exchange when
/// its response head arrives: one lenient scan to the operation's name, stopping there. A
/// request it cannot read is copied (the response may still be read).
fn judge_request(route: RouteClass, body: &[u8]) -> ResponseUse {
    /// The operation is the first element of the SOAP body, after a header of a few KiB at
    /// most: a request with a large MIME upload is not read past this to find it (a header
    /// longer than this leaves the operation unknown, and the copy is kept).
    const OPERATION_WITHIN: usize = 64 << 10;
    if route != RouteClass::Ews {
        return ResponseUse::Inspect;
    }
    match crate::inspect::xml::operation(&body[..body.len().min(OPERATION_WITHIN)]) {
        Some(op) if op == "GetStreamingEvents" => ResponseUse::EndlessStream,
        Some(op) if !crate::inspect::ews::reads(&op) => ResponseUse::NothingRead,
        _ => ResponseUse::Inspect,
    }
}

/// The proxy's and the admin endpoint's listeners, bound, with the addresses they got.
pub(super) struct Listeners {
    pub proxy: std::net::TcpListener,
    pub proxy_addr: SocketAddr,
    pub admin: TcpListener,
    pub admin_addr: SocketAddr,
}

/// Binds both listeners. Runs before anything is written to disk, so that a taken port costs
/// one clear line and leaves no data directory behind.
pub(super) async fn listeners(config: &Config) -> Result<Listeners, AppError> {
    let bind_error = |listener, addr| {
        move |e: std::io::Error| AppError::Bind {
            listener,
            addr,
            reason: e.to_string(),
        }
    };
    let (proxy_at, admin_at) = (config.listener.address, config.admin.address);
    let shared = super::settings::proxy_threads(config).is_some();
    let proxy = server::bind(proxy_at, shared).map_err(bind_error(&PROXY_LISTENER, proxy_at))?;
    let admin = TcpListener::bind(admin_at)
        .await
        .map_err(bind_error(&ADMIN_LISTENER, admin_at))?;
    Ok(Listeners {
        proxy_addr: proxy
            .local_addr()
            .map_err(bind_error(&PROXY_LISTENER, proxy_at))?,
        admin_addr: admin
            .local_addr()
            .map_err(bind_error(&ADMIN_LISTENER, admin_at))?,
        proxy,
        admin,
    })
}

/// The outbox the configuration names: the gateway's own redb file, or the fleet's JetStream
/// stream (connected and checked here; refused credentials or a wrong stream stop the start).
/// With NATS, also the fleet's mailbox leases, which the catch-up sweep consults.
pub async fn outbox(
    config: &Config,
    registry: &mut Registry,
) -> Result<(Arc<dyn Outbox>, Option<Arc<Leases>>), AppError> {
    let metrics = OutboxMetrics::register(registry);
    let (Some(nats), Some(leases)) = (settings::nats(config), settings::leases(config)) else {
        let outbox = RedbOutbox::open(
            &config.outbox.file,
            settings::outbox(&config.outbox),
            metrics,
        )?;
        return Ok((Arc::new(outbox), None));
    };
    let outbox = NatsOutbox::open(
        nats,
        NatsMetrics::register(registry),
        metrics,
        Role::Gateway {
            deliver: config.delivery.enabled,
        },
    )
    .await?;
    let leases = Leases::open(outbox.jetstream(), leases, FleetMetrics::register(registry))
        .await
        .map_err(AppError::Fleet)?;
    Ok((Arc::new(outbox), Some(leases)))
}

/// Keeps the leases of the directory's mailboxes (and, with a Dataverse directory, of its
/// refreshing) until the gateway stops.
pub fn keep_leases(leases: &Arc<Leases>, directory: &Directory, stopped: watch::Receiver<bool>) {
    let handle = directory.handle.clone();
    let shared = directory.dataverse.is_some();
    let mailboxes = move || -> Arc<[String]> {
        let lease = shared.then(|| DIRECTORY_LEASE.to_owned());
        handle.guard().mailbox_addresses().chain(lease).collect()
    };
    tokio::spawn(leases.clone().run(Arc::new(mailboxes), stopped));
}

/// With a fleet and a Dataverse directory: the gateway holding the directory lease refreshes
/// and shares, the others follow (in place of each refreshing on its own).
pub async fn shared_directory(
    config: &Config,
    directory: &Directory,
    leases: Option<&Arc<Leases>>,
) -> Result<Option<SharedDirectory>, AppError> {
    let (Some(leases), Some(source), Some(bucket)) = (
        leases,
        &directory.dataverse,
        settings::directory_bucket(config),
    ) else {
        return Ok(None);
    };
    SharedDirectory::open(
        leases.jetstream(),
        &bucket,
        leases.clone(),
        source.clone(),
        directory.handle.clone(),
        directory.metrics.clone(),
    )
    .await
    .map(Some)
    .map_err(AppError::Fleet)
}

/// The options page's store, when the page is served: what it holds is laid over every
/// directory document, so it is opened before the directory loads.
pub(super) fn options_store(config: &Config) -> Result<Option<Arc<OptionsStore>>, AppError> {
    if !config.options.enabled || matches!(config.options.sign_in, SignIn::Off) {
        return Ok(None);
    }
    Ok(Some(Arc::new(OptionsStore::open(&config.options.store)?)))
}

/// The options page, when its store is open.
pub(super) fn options_page(
    config: &Config,
    store: Option<Arc<OptionsStore>>,
    parts: (&Arc<Engine>, Option<Arc<History>>, &Directory),
    exchange: Option<Arc<ExchangeClient>>,
    fields: &FieldTable,
    http: &reqwest::Client,
) -> Option<Arc<OptionsPage>> {
    let (engine, history, directory) = parts;
    let (store, history) = (store?, history?);
    let target = match &directory.dataverse {
        Some(source) => Target::Dataverse(source.clone()),
        None => Target::File(directory.file.clone()),
    };
    let document: DocumentReader = match &directory.dataverse {
        Some(source) => {
            let source = source.clone();
            Arc::new(move || {
                let source = source.clone();
                Box::pin(async move { Some(source.document().await) })
            })
        }
        None => {
            let file = directory.file.clone();
            Arc::new(move || {
                let source = file.lock().map(|s| s.clone()).ok();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || source?.read_document().ok())
                        .await
                        .ok()
                        .flatten()
                })
            })
        }
    };
    let parts = OptionsParts {
        engine: engine.clone(),
        history,
        saver: Saver {
            one_at_a_time: tokio::sync::Mutex::new(()),
            target,
            store,
            directory: directory.handle.clone(),
            metrics: directory.metrics.clone(),
        },
        exchange,
        privacy: settings::privacy(config, fields),
        document,
    };
    Some(Arc::new(OptionsPage::new(
        config.options.clone(),
        parts,
        http.clone(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(operation: &str, inner: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><{operation} xmlns="http://schemas.microsoft.com/exchange/services/2006/messages">{inner}</{operation}></soap:Body></soap:Envelope>"#
        )
        .into_bytes()
    }

    #[test]
    fn requests_are_judged_by_their_operation_within_a_bounded_prefix() {
        let ews = |body: &[u8]| judge_request(RouteClass::Ews, body);
        assert_eq!(ews(&envelope("GetItem", "")), ResponseUse::Inspect);
        assert_eq!(
            ews(&envelope("GetAttachment", "")),
            ResponseUse::NothingRead
        );
        assert_eq!(
            ews(&envelope("GetStreamingEvents", "")),
            ResponseUse::EndlessStream
        );
        // A large upload: the operation is found in its first bytes, cut mid-character.
        let mime = format!("<MimeContent>{}</MimeContent>", "é".repeat(200_000));
        let create = envelope("CreateItem", &mime);
        assert!(std::str::from_utf8(&create[..64 << 10]).is_err());
        assert_eq!(ews(&create), ResponseUse::Inspect);
        let resolve = envelope("ResolveNames", &mime);
        assert_eq!(ews(&resolve), ResponseUse::NothingRead);
        // Unreadable, or not EWS: kept, since the response may still be read.
        assert_eq!(ews(b"not xml"), ResponseUse::Inspect);
        assert_eq!(
            judge_request(RouteClass::Graph, &envelope("GetAttachment", "")),
            ResponseUse::Inspect
        );
    }
}
