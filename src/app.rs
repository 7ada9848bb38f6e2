//! The composition root: builds each stage from its configuration section, wires them, runs
//! the signal loop (SIGHUP reloads, SIGTERM/SIGINT drain) and shuts down in order. It parses
//! nothing and forwards nothing itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, ListenerTls, SinkConfig, UpstreamTarget};
use crate::crm::{DataverseSettings, DataverseSink, Journal, Sink, WebhookSettings, WebhookSink};
use crate::delivery::{Delivery, DeliveryMetrics};
use crate::directory::dataverse::DataverseSource;
use crate::directory::{DirectoryError, DirectoryHandle, DirectoryMetrics, FileSource};
use crate::exchange::ExchangeClient;
use crate::inspect::InspectLimits;
use crate::inspect::decode::DecodeLimits;
use crate::inspect::worker::{self, InspectMetrics, RecentObservations};
use crate::inspect::xml::XmlLimits;
use crate::outbox::{Outbox, OutboxError, OutboxMetrics, RedbOutbox};
use crate::proxy::capture::{Budget, CaptureSink};
use crate::proxy::server;
use crate::proxy::{Proxy, ProxyBuildError, ProxyMetrics, ProxyState, Routes, UpstreamBase};
use crate::rules::{Engine, MemoryLimits, Mode, RecentDecisions, RulesLimits, RulesMetrics};
use crate::simulate::fixtures::FixtureError;
use crate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};
use crate::{telemetry, tls};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] ProxyBuildError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("built-in Exchange simulator: {0}")]
    Fixtures(#[from] FixtureError),
    #[error("cannot start the built-in Exchange simulator: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("{0}")]
    Reload(&'static str),
    #[error("cannot start the inspection worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    DirectorySource(crate::directory::dataverse::SourceError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Journal(#[from] crate::crm::journal::JournalError),
    #[error("cannot build the HTTP client for the CRM and Exchange: {0}")]
    HttpClient(String),
}

/// A running gateway.
pub struct Gateway {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    server_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    simulator: Option<ExchangeSimulator>,
    config: Mutex<Config>,
    inspect_metrics: Arc<InspectMetrics>,
    recent: Arc<RecentObservations>,
    engine: Arc<Engine>,
    rules_metrics: Arc<RulesMetrics>,
    decisions: Arc<RecentDecisions>,
    directory_source: Arc<Mutex<FileSource>>,
    directory_metrics: Arc<DirectoryMetrics>,
    dataverse_source: Option<Arc<DataverseSource>>,
    outbox: Arc<RedbOutbox>,
    journal: Option<Arc<Journal>>,
    delivery_stop: watch::Sender<bool>,
    delivery_task: Option<JoinHandle<()>>,
}

/// The client for every outbound service call (CRM, webhook, Exchange enrichment).
fn service_client(config: &Config) -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .timeout(config.delivery.request_timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("trackgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AppError::HttpClient(e.to_string()))
}

/// The configured sink (and the journal, when it is the sink, for the admin endpoints).
fn build_sink(
    config: &Config,
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
                    batch_size: config.delivery.settings.batch_size,
                    timeout: config.delivery.request_timeout,
                    columns: config.crm.fields.email,
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
                },
            )),
            None,
        ),
    })
}

fn directory_source(config: &Config) -> FileSource {
    FileSource {
        path: config.directory.file.clone(),
        max_size: config.directory.max_file_size,
    }
}

/// Starts every part and returns once the listeners are bound and the gateway is ready.
pub async fn start(mut config: Config) -> Result<Gateway, AppError> {
    tls::install_crypto_provider();
    with_simulator_hosts(&mut config);
    let simulator = match config.upstreams.target {
        UpstreamTarget::Simulator => {
            let options = SimulatorOptions::new("embedded", FixtureSet::embedded()?);
            let sim = ExchangeSimulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), options)
                .await
                .map_err(AppError::Simulator)?;
            Some(sim)
        }
        UpstreamTarget::Remote { .. } => None,
    };
    let routes = routes_for(&config, simulator.as_ref())?;

    let mut registry = telemetry::new_registry();
    let metrics = Arc::new(ProxyMetrics::register(&mut registry));
    let inspect_metrics = Arc::new(InspectMetrics::register(&mut registry));
    let recent = RecentObservations::new(1024);

    // The directory and the rules that read it.
    let directory_metrics = Arc::new(DirectoryMetrics::register(&mut registry));
    let http = service_client(&config)?;
    let source = directory_source(&config);
    let (snapshot, dataverse_source) = match &config.directory.dataverse {
        None => (source.load()?, None),
        Some(dv) => {
            let (dataverse, replica) = DataverseSource::open(http.clone(), dv.source.clone())
                .map_err(AppError::DirectorySource)?;
            let snapshot = match replica {
                Some(r) => r,
                None => crate::directory::dataverse::empty_directory()
                    .map_err(|e| AppError::DirectorySource(e.into()))?,
            };
            (snapshot, Some(Arc::new(dataverse)))
        }
    };
    directory_metrics.loaded(&snapshot);
    tracing::info!(counts = ?snapshot.counts(), "directory loaded");
    let directory = DirectoryHandle::new(snapshot);
    if let (Some(dataverse), Some(dv)) = (&dataverse_source, &config.directory.dataverse) {
        // The first load runs as its own task: waited for up to `startup_wait`, then left to
        // finish in the background while the replica (or nothing) serves.
        let first = tokio::spawn({
            let (source, handle, metrics) = (
                dataverse.clone(),
                directory.clone(),
                directory_metrics.clone(),
            );
            async move { crate::directory::dataverse::refresh_now(&source, &handle, &metrics).await }
        });
        let serving = if dataverse.status().from_replica {
            "serving the persisted replica"
        } else {
            "nothing is tracked until it answers (no replica yet)"
        };
        match tokio::time::timeout(dv.startup_wait, first).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "Dataverse not loaded at start; {serving}");
            }
            Ok(Err(_)) => tracing::warn!("the first directory load stopped; {serving}"),
            Err(_) => tracing::warn!(
                wait = ?dv.startup_wait,
                "Dataverse still loading after startup_wait; {serving} meanwhile"
            ),
        }
        directory_metrics.source_status(&dataverse.status());
    }
    let engine = Arc::new(Engine::new(
        directory.clone(),
        MemoryLimits {
            max_bytes: config.rules.memory,
            max_tracked: config.rules.tracked_memory_entries,
        },
        RulesLimits {
            max_parties: config.rules.max_parties,
        },
    ));
    let rules_metrics = Arc::new(RulesMetrics::register(&mut registry));
    let decisions = RecentDecisions::new(config.rules.recent_decisions);
    let directory_source = Arc::new(Mutex::new(source));

    // The outbox and delivery.
    let outbox = Arc::new(RedbOutbox::open(
        &config.outbox.file,
        config.outbox.settings.clone(),
        OutboxMetrics::register(&mut registry),
    )?);
    let (sink, journal) = build_sink(&config, &http)?;
    let delivery = Delivery::new(
        outbox.clone(),
        Arc::new(sink),
        config
            .exchange
            .clone()
            .map(|s| Arc::new(ExchangeClient::new(http.clone(), s))),
        engine.clone(),
        config.delivery.settings.clone(),
        DeliveryMetrics::register(&mut registry),
    );

    let capture = if config.inspect.enabled {
        let i = &config.inspect;
        let (queue, captures) = tokio::sync::mpsc::channel(i.queue);
        let budget = Budget::new(i.memory_budget);
        let limits = InspectLimits {
            xml: XmlLimits {
                max_depth: i.xml_max_depth,
                max_elements: i.xml_max_elements,
            },
            decode: DecodeLimits {
                max_output: i.decoded_limit,
                max_ratio: i.max_ratio,
            },
        };
        worker::spawn(
            captures,
            budget.clone(),
            limits,
            inspect_metrics.clone(),
            recent.clone(),
            {
                let (engine, rules_metrics, decisions, outbox) = (
                    engine.clone(),
                    rules_metrics.clone(),
                    decisions.clone(),
                    outbox.clone(),
                );
                move |o| {
                    for d in engine.decide(o, Mode::APPLY) {
                        rules_metrics.record(&d);
                        tracing::debug!(verdict = ?d.verdict, reason = d.reason.as_str(), "decision");
                        if d.is_track() {
                            outbox.submit(&d);
                        }
                        decisions.push(d);
                    }
                }
            },
        )
        .map_err(AppError::Worker)?;
        Some(Arc::new(CaptureSink::new(
            queue,
            i.capture_limit,
            budget,
            metrics.captures.clone(),
            Some(is_streaming_request),
        )))
    } else {
        None
    };
    let proxy = Arc::new(Proxy::new(
        ProxyState::build(&config, routes, &metrics)?,
        metrics,
        capture,
    ));

    let listener = server::bind(config.listener.address).map_err(|source| AppError::Bind {
        what: "proxy listener",
        addr: config.listener.address,
        source,
    })?;
    let admin_listener = TcpListener::bind(config.admin.address)
        .await
        .map_err(|source| AppError::Bind {
            what: "admin listener",
            addr: config.admin.address,
            source,
        })?;
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| AppError::Bind { what, addr, source })
    };
    let proxy_addr = local(&listener, "proxy listener", config.listener.address)?;
    let admin_addr = local(&admin_listener, "admin listener", config.admin.address)?;

    let (stop, stopped) = watch::channel(false);
    let server_task = tokio::spawn(server::serve(listener, proxy.clone(), stopped.clone()));
    match &dataverse_source {
        Some(dataverse) => {
            tokio::spawn(crate::directory::dataverse::keep_fresh(
                dataverse.clone(),
                directory.clone(),
                directory_metrics.clone(),
                stopped.clone(),
            ));
        }
        None => {
            tokio::spawn(crate::directory::file::watch(
                directory_source.clone(),
                config.directory.poll_interval,
                stopped.clone(),
                {
                    let (directory, metrics) = (directory.clone(), directory_metrics.clone());
                    move |loaded| {
                        if let Err(error) = directory.apply(loaded, &metrics) {
                            tracing::error!(%error, "directory file changed but is not valid; keeping the last snapshot");
                        }
                    }
                },
            ));
        }
    }
    let admin_state = Arc::new(AdminState {
        proxy: proxy.clone(),
        registry: Arc::new(registry),
        engine: engine.clone(),
        decisions: decisions.clone(),
        token: config.admin.token.clone(),
        outbox: outbox.clone(),
        journal: journal.clone(),
        directory_source: dataverse_source.clone(),
        directory_metrics: directory_metrics.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, stopped));
    let (delivery_stop, delivery_stopped) = watch::channel(false);
    let delivery_task = config
        .delivery
        .enabled
        .then(|| delivery.spawn(delivery_stopped, config.shutdown.grace_period));
    proxy.set_ready(true);
    Ok(Gateway {
        proxy_addr,
        admin_addr,
        proxy,
        stop,
        server_task,
        admin_task,
        simulator,
        config: Mutex::new(config),
        inspect_metrics,
        recent,
        engine,
        rules_metrics,
        decisions,
        directory_source,
        directory_metrics,
        dataverse_source,
        outbox,
        journal,
        delivery_stop,
        delivery_task,
    })
}

/// An EWS `GetStreamingEvents` request: its response never ends, so it is not copied.
fn is_streaming_request(body: &[u8]) -> bool {
    // Runs on the proxy worker for every EWS request: a byte search rules out nearly all of
    // them before any XML is parsed.
    memchr::memmem::find(body, b"GetStreamingEvents").is_some()
        && crate::inspect::xml::operation(body).is_some_and(|op| op == "GetStreamingEvents")
}

/// The built-in simulator's fixtures name `mail.contoso.example` as the Exchange host; its
/// Autodiscover answers are rewritten like a real Exchange's would be.
fn with_simulator_hosts(config: &mut Config) {
    if config.upstreams.target == UpstreamTarget::Simulator {
        let host = "mail.contoso.example".to_owned();
        if !config.autodiscover.exchange_hosts.contains(&host) {
            config.autodiscover.exchange_hosts.push(host);
        }
    }
}

fn routes_for(config: &Config, simulator: Option<&ExchangeSimulator>) -> Result<Routes, AppError> {
    let base = |uri: &http::Uri| {
        UpstreamBase::new(uri).ok_or(AppError::Reload("upstream URL lost its scheme or host"))
    };
    match (&config.upstreams.target, simulator) {
        (
            UpstreamTarget::Remote {
                ews,
                graph,
                autodiscover,
            },
            _,
        ) => Ok(Routes {
            ews: base(ews)?,
            graph: base(graph)?,
            autodiscover: base(autodiscover)?,
        }),
        (UpstreamTarget::Simulator, Some(sim)) => {
            let uri: http::Uri = sim
                .url()
                .parse()
                .map_err(|_| AppError::Reload("simulator URL is not a URI"))?;
            let b = base(&uri)?;
            Ok(Routes {
                ews: b.clone(),
                graph: b.clone(),
                autodiscover: b,
            })
        }
        (UpstreamTarget::Simulator, None) => Err(AppError::Reload(
            "switching to the built-in simulator needs a restart (upstreams.ews was removed)",
        )),
    }
}

impl Gateway {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn inspect_metrics(&self) -> &InspectMetrics {
        &self.inspect_metrics
    }

    /// The latest observations (at most 1024), oldest first.
    pub fn recent_observations(&self) -> Vec<crate::inspect::Observation> {
        self.recent.snapshot()
    }

    /// `https://127.0.0.1:8443` (or `http://…` on a plaintext listener).
    pub fn proxy_url(&self) -> String {
        let tls = self
            .config
            .lock()
            .map(|c| c.listener.tls != ListenerTls::Off)
            .unwrap_or(true);
        format!(
            "{}://{}",
            if tls { "https" } else { "http" },
            self.proxy_addr
        )
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The development CA clients should trust, when the listener uses development certificates.
    pub fn dev_ca(&self) -> Option<PathBuf> {
        let config = self.config.lock().ok()?;
        match &config.listener.tls {
            ListenerTls::Development { dir } => Some(tls::DevCerts::in_dir(dir).ca),
            _ => None,
        }
    }

    pub fn simulator_url(&self) -> Option<String> {
        self.simulator.as_ref().map(ExchangeSimulator::url)
    }

    /// The rules engine (for explain and tests).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn rules_metrics(&self) -> &RulesMetrics {
        &self.rules_metrics
    }

    pub fn directory_metrics(&self) -> &DirectoryMetrics {
        &self.directory_metrics
    }

    /// The Dataverse directory source, when the directory comes from Dataverse.
    pub fn dataverse_source(&self) -> Option<&Arc<DataverseSource>> {
        self.dataverse_source.as_ref()
    }

    /// Refreshes the directory from Dataverse now (a file source reloads its file).
    pub async fn refresh_directory(&self) -> Result<(), AppError> {
        match &self.dataverse_source {
            Some(source) => crate::directory::dataverse::refresh_now(
                source,
                self.engine.directory(),
                &self.directory_metrics,
            )
            .await
            .map_err(AppError::DirectorySource),
            None => self.reload_from_source(),
        }
    }

    /// The outbox (for tests and the admin endpoints).
    pub fn outbox(&self) -> &Arc<RedbOutbox> {
        &self.outbox
    }

    /// The journal, when it is the configured sink.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// The most recent decisions, oldest first.
    pub fn recent_decisions(&self) -> Vec<crate::rules::Decision> {
        self.decisions.snapshot()
    }

    /// Applies a new configuration to new requests and connections: upstreams, timeouts,
    /// limits, TLS certificates, and reloads the directory. Listener addresses, the connection
    /// budget and the rules' memory size need a restart. On error nothing changes.
    pub fn reload(&self, mut config: Config) -> Result<(), AppError> {
        with_simulator_hosts(&mut config);
        let routes = routes_for(&config, self.simulator.as_ref())?;
        let state = ProxyState::build(&config, routes, &self.proxy.metrics)?;
        if self.dataverse_source.is_some() || config.directory.dataverse.is_some() {
            // The Dataverse source refreshes on its own schedule; switching sources needs a
            // restart.
            if self.dataverse_source.is_some() != config.directory.dataverse.is_some() {
                tracing::warn!("directory.source changes only on restart; kept the running source");
            }
        } else {
            let source = directory_source(&config);
            let snapshot = match source.load() {
                Ok(s) => s,
                Err(error) => {
                    self.directory_metrics.failed();
                    return Err(error.into());
                }
            };
            self.engine
                .directory()
                .apply(Ok(snapshot), &self.directory_metrics)?;
            if let Ok(mut current) = self.directory_source.lock() {
                *current = source;
            }
        }
        if let Ok(mut current) = self.config.lock() {
            if current.listener.address != config.listener.address
                || current.admin.address != config.admin.address
                || current.limits.max_connections != config.limits.max_connections
            {
                tracing::warn!(
                    "listener addresses and limits.max_connections change only on restart; kept the old ones"
                );
            }
            *current = config;
        }
        self.proxy.swap(state);
        Ok(())
    }

    /// Reloads from the file the configuration came from (or the embedded defaults).
    pub fn reload_from_source(&self) -> Result<(), AppError> {
        let source = self.config.lock().ok().and_then(|c| c.source.clone());
        let config = match source {
            Some(path) => Config::load(&path)?.1,
            None => Config::embedded()?.1,
        };
        self.reload(config)
    }

    /// The drain sequence: readiness false, wait `drain_delay` so load balancers notice, stop
    /// accepting, let in-flight requests finish within `grace_period`, then stop everything.
    pub async fn shutdown(self) {
        let (delay, grace) = self
            .config
            .lock()
            .map(|c| (c.shutdown.drain_delay, c.shutdown.grace_period))
            .unwrap_or_default();
        self.proxy.set_ready(false);
        tracing::info!("draining: readiness is false");
        tokio::time::sleep(delay).await;
        let _ = self.stop.send(true);
        let _ = self.server_task.await;
        if server::drain(&self.proxy, grace).await {
            tracing::info!("drained: every client connection closed");
        } else {
            tracing::warn!(grace = ?grace, "grace period over; closing remaining connections");
        }
        // Every decision of the drained traffic is committed before delivery stops: inspection
        // finishes what was handed to it (within the grace period), then the outbox flushes.
        // What is not delivered stays in the outbox for the next start.
        let deadline = tokio::time::Instant::now() + grace;
        let handed_off = self.proxy.metrics.captures.handed_off.get();
        while self
            .inspect_metrics
            .finished
            .load(std::sync::atomic::Ordering::Acquire)
            < handed_off
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let flush = |outbox: Arc<RedbOutbox>| async move {
            let _ = tokio::task::spawn_blocking(move || outbox.flush()).await;
        };
        flush(self.outbox.clone()).await;
        let _ = self.delivery_stop.send(true);
        if let Some(task) = self.delivery_task {
            let _ = task.await;
        }
        // The settlements of the last deliveries.
        flush(self.outbox.clone()).await;
        self.admin_task.abort();
        if let Some(sim) = self.simulator {
            sim.stop().await;
        }
    }
}

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub async fn run(config: Config) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let gateway = start(config).await?;
    print_banner(&gateway);
    loop {
        tokio::select! {
            _ = hangup.recv() => match crate::off_the_workers(|| gateway.reload_from_source()) {
                Ok(()) => {
                    gateway.proxy.metrics.config_reloads_ok.inc();
                    tracing::info!("configuration reloaded");
                }
                Err(error) => {
                    gateway.proxy.metrics.config_reloads_failed.inc();
                    tracing::error!(%error, "reload failed; keeping the running configuration");
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    gateway.shutdown().await;
    Ok(())
}

/// Tells a person what to point a client at. The first line is stable for scripts:
/// `trackgate ready proxy=<url> admin=<url>`.
fn print_banner(gateway: &Gateway) {
    let proxy = gateway.proxy_url();
    let admin = gateway.admin_url();
    println!("trackgate ready proxy={proxy} admin={admin}");
    println!();
    println!("  EWS endpoint:   {proxy}/EWS/Exchange.asmx");
    println!("  Graph base URL: {proxy}/v1.0");
    println!("  admin:          {admin}/healthz  {admin}/readyz  {admin}/metrics");
    match gateway.simulator_url() {
        Some(sim) => println!("  upstream:       built-in Exchange simulator ({sim})"),
        None => println!("  upstream:       configured Exchange"),
    }
    println!("  outbox:         {}", gateway.outbox.path().display());
    if let Ok(config) = gateway.config.lock() {
        match &config.crm.sink {
            SinkConfig::Journal { file } => println!(
                "  CRM:            journal {} (trackgate journal list)",
                file.display()
            ),
            SinkConfig::Dataverse { url, .. } => println!("  CRM:            Dataverse {url}"),
            SinkConfig::Webhook { .. } => println!("  CRM:            webhook"),
        }
    }
    let cacert = match gateway.dev_ca() {
        Some(ca) => {
            println!("  trust this CA:  {}", ca.display());
            format!("--cacert {} ", ca.display())
        }
        None => String::new(),
    };
    let host_url = proxy.replace("127.0.0.1", "localhost");
    println!();
    println!("Try it:");
    println!(
        "  curl {cacert}-H 'Content-Type: text/xml; charset=utf-8' --data '<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><GetFolder xmlns=\"http://schemas.microsoft.com/exchange/services/2006/messages\"/></s:Body></s:Envelope>' {host_url}/EWS/Exchange.asmx"
    );
    println!();
    println!("SIGHUP reloads the configuration; SIGTERM or Ctrl-C drains and stops.");
}
