//! The composition root: builds each stage from its settings (`settings` resolves them from the
//! configuration, `build` has one constructor per stage), wires them in flow order, runs the
//! signal loop (SIGHUP reloads, SIGTERM/SIGINT drain) and shuts down in order. It parses
//! nothing and forwards nothing itself.

mod build;
pub mod record;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::catchup::Sweeper;
use crate::config::{Config, ConfigError, ListenerTls, SinkConfig, UpstreamTarget};
use crate::crm::Journal;
use crate::delivery::{Delivered, Delivery, DeliveryMetrics, RecentDeliveries};
use crate::directory::dataverse::DataverseSource;
use crate::directory::{DirectoryError, DirectoryMetrics, FileSource, Overlay};
use crate::inspect::worker::{InspectMetrics, RecentObservations};
use crate::options::History;
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::Pipeline;
use crate::proxy::server;
use crate::proxy::{Proxy, ProxyBuildError, ProxyMetrics, ProxyState, Routes, UpstreamBase};
use crate::rules::{Engine, RecentDecisions, RulesMetrics};
use crate::simulate::ExchangeSimulator;
use crate::simulate::fixtures::FixtureError;
use crate::{telemetry, tls};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the catch-up sweep cannot start: {0}")]
    Catchup(String),
    #[error("synchronisation: {0}")]
    Sync(String),
    #[error("the fleet: {0}")]
    Fleet(String),
    #[error(
        "cannot listen on {addr} for the {}: {reason}\nfix: stop what holds it, or choose another address with `{}` in the configuration, the environment variable {}, or `serve {}`",
        listener.what, listener.key, listener.env, listener.flag
    )]
    Bind {
        listener: &'static Listener,
        addr: SocketAddr,
        /// The system's reason, once (not also as a source: it would be printed twice).
        reason: String,
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
    Options(#[from] crate::options::StoreError),
    #[error(transparent)]
    Journal(#[from] crate::crm::journal::JournalError),
    #[error("cannot build the HTTP client for the CRM and Exchange: {0}")]
    HttpClient(String),
}

/// Observations kept for [`Gateway::recent_observations`] (tests and embedding code; no
/// endpoint serves them). Few on purpose: every observation passes through, and a long ring's
/// cold entries, freed one per observation, cost the inspection thread cache misses (with
/// 1 024 here and the decisions' 1 024, the two rings took 8 % of it in the load harness).
const RECENT_OBSERVATIONS: usize = 64;

/// One of the gateway's listeners, and every way an operator can move it.
#[derive(Debug)]
pub struct Listener {
    pub what: &'static str,
    /// The configuration key.
    pub key: &'static str,
    /// The environment variable overriding that key.
    pub env: &'static str,
    /// The `serve` flag overriding both.
    pub flag: &'static str,
}

pub static PROXY_LISTENER: Listener = Listener {
    what: "proxy listener",
    key: "listener.address",
    env: "TRACKGATE_LISTENER__ADDRESS",
    flag: "--listen ADDR",
};

pub static ADMIN_LISTENER: Listener = Listener {
    what: "admin listener",
    key: "admin.address",
    env: "TRACKGATE_ADMIN__ADDRESS",
    flag: "--admin ADDR",
};

/// A running gateway.
pub struct Gateway {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    server_task: JoinHandle<()>,
    /// The proxy's own threads under `runtime.model = "per_core"`; dropped, they close what
    /// is still open.
    proxy_threads: Option<server::ProxyThreads>,
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
    outbox: Arc<dyn Outbox>,
    journal: Option<Arc<Journal>>,
    delivery_stop: watch::Sender<bool>,
    delivery_task: Option<JoinHandle<()>>,
    deliveries: Arc<RecentDeliveries>,
    catchup: Option<Arc<Sweeper>>,
    catchup_task: Option<JoinHandle<()>>,
    /// The options page's history of recent observations and the store it is saved to at
    /// shutdown.
    preview_history: Option<(Arc<History>, Arc<crate::options::OptionsStore>)>,
    /// The catch-up sweep's own runtime, stopped when the gateway is dropped.
    _catchup_runtime: Option<crate::common::BehindTraffic>,
    sync: Option<Arc<crate::sync::Syncer>>,
    sync_task: Option<JoinHandle<()>>,
    _sync_runtime: Option<crate::common::BehindTraffic>,
}

/// Starts every part and returns once the listeners are bound and the gateway is ready. Reads
/// like the flow: the upstream, then what works behind the traffic from the end back (the
/// directory and the rules, the outbox, delivery), then inspection and the proxy in front.
/// Kept whole, a little over a screen, so the wiring is read in one place and in flow order;
/// each step is a constructor in `build` or a stage's own `new`.
pub async fn start(mut config: Config) -> Result<Gateway, AppError> {
    tls::install_crypto_provider();
    let checked = settings::check(&config)?;
    // Bound first: a taken port must fail the start before anything is written to disk.
    let listeners = build::listeners(&config).await?;
    with_simulator_hosts(&mut config);
    let simulator = build::embedded_upstream(&config).await?;
    let routes = routes_for(&config, simulator.as_ref())?;
    let mut registry = telemetry::new_registry();
    let http = build::service_client(&config)?;

    // The directory and the rules that read it.
    let options_store = build::options_store(&config)?;
    let overlay = options_store
        .clone()
        .map_or_else(Overlay::default, |s| Overlay::new(s));
    let directory =
        build::directory(&config, checked.dataverse, overlay, &http, &mut registry).await?;
    let (memory, limits) = settings::rules(&config.rules);
    let engine = Arc::new(Engine::new(directory.handle.clone(), memory, limits));
    let rules_metrics = Arc::new(RulesMetrics::register(&mut registry));
    let decisions = RecentDecisions::new(config.rules.recent_decisions);

    // The outbox, and delivery from it to the sink.
    let (outbox, leases) = build::outbox(&config, &mut registry).await?;
    let shared_directory = build::shared_directory(&config, &directory, leases.as_ref()).await?;
    let (sink, journal) = build::sink(&config, &checked.fields, &http)?;
    let exchange = build::exchange_client(&config, simulator.as_ref(), &http);
    let marks = build::catchup_marks(&config, exchange.as_ref());
    let history = options_store.as_ref().map(|_| {
        History::new(
            config.options.history_per_mailbox,
            config.options.history_mailboxes,
        )
    });
    // Kept only when previews replay it (it costs about 1.3 µs per observation), and carried
    // over from the last run.
    let recorded = history
        .clone()
        .filter(|_| config.options.history_per_mailbox > 0);
    let preview_history = recorded.clone().zip(options_store.clone());
    if let Some((history, store)) = &preview_history {
        let (history, store) = (history.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || history.restore(store.load_history())).await;
    }
    let pipeline = Arc::new(
        Pipeline::new(
            engine.clone(),
            rules_metrics.clone(),
            decisions.clone(),
            outbox.clone(),
        )
        .with_marks(marks.clone())
        .with_history(recorded),
    );
    let options = build::options_page(
        &config,
        options_store,
        (&engine, history, &directory),
        exchange.clone(),
        &checked.fields,
        &http,
    );
    let catchup = build::catchup(
        &config,
        exchange.as_ref(),
        marks.as_ref(),
        &directory.handle,
        &pipeline,
        leases
            .clone()
            .map(|l| l as Arc<dyn crate::fleet::Ownership>),
        &mut registry,
    )?;
    let sync = build::sync(
        &config,
        directory.dataverse.as_ref(),
        exchange.as_ref(),
        &checked.fields,
        leases
            .clone()
            .map(|l| l as Arc<dyn crate::fleet::Ownership>),
        (directory.handle.clone(), directory.metrics.clone()),
        &mut registry,
    )?;
    let delivery = Delivery::new(
        outbox.clone(),
        Arc::new(sink),
        exchange,
        engine.clone(),
        settings::delivery(&config.delivery),
        DeliveryMetrics::register(&mut registry),
    );
    for caveat in settings::caveats(&config) {
        tracing::warn!("{caveat}");
    }
    if config.delivery.enabled
        && let Some((target, expected)) = settings::online_check(&config)
    {
        // What `check --online` says, at start-up: non-fatal, logged, and in `/readyz`.
        let (health, http) = (delivery.health(), http.clone());
        tokio::spawn(async move {
            let findings = crate::crm::online::run(&http, &target, &expected).await;
            health.checked(&findings);
        });
    }

    // Inspection feeding the pipeline, and the proxy in front of it all.
    let metrics = Arc::new(ProxyMetrics::register(&mut registry));
    let inspect_metrics = Arc::new(InspectMetrics::register(&mut registry));
    let recent = RecentObservations::new(RECENT_OBSERVATIONS);
    let capture = build::inspection(
        &config,
        pipeline,
        inspect_metrics.clone(),
        recent.clone(),
        &metrics,
        build::drop_hook(marks.as_ref(), &engine),
    )?;
    let proxy = Arc::new(Proxy::new(
        ProxyState::build(&settings::proxy(&config), routes, &metrics)?,
        metrics,
        capture,
    ));

    // Serve, and keep the directory fresh.
    let (stop, stopped) = watch::channel(false);
    let (proxy_threads, server_task) = match settings::proxy_threads(&config) {
        Some(threads) => {
            let (threads, task) =
                server::serve_on_threads(listeners.proxy, threads, proxy.clone(), stopped.clone())
                    .map_err(|e| AppError::Bind {
                        listener: &PROXY_LISTENER,
                        addr: listeners.proxy_addr,
                        reason: e.to_string(),
                    })?;
            (Some(threads), task)
        }
        None => (
            None,
            tokio::spawn(server::serve(
                listeners.proxy,
                proxy.clone(),
                server::Budget::BeforeAccept,
                stopped.clone(),
            )),
        ),
    };
    build::keep_directory_fresh(
        &directory,
        shared_directory,
        config.directory.poll_interval,
        stopped.clone(),
    );
    if let Some(leases) = &leases {
        build::keep_leases(leases, &directory, stopped.clone());
    }
    let catchup_task = catchup
        .as_ref()
        .map(|(sweeper, runtime)| sweeper.clone().spawn(runtime.handle(), stopped.clone()));
    let (catchup, catchup_runtime) = catchup.unzip();
    let sync_task = sync
        .as_ref()
        .map(|(syncer, runtime)| runtime.handle().spawn(syncer.clone().run(stopped.clone())));
    let (sync, sync_runtime) = sync.unzip();
    let admin_state = Arc::new(AdminState {
        proxy: proxy.clone(),
        registry: Arc::new(registry),
        engine: engine.clone(),
        decisions: decisions.clone(),
        token: config.admin.token.clone(),
        outbox: outbox.clone(),
        journal: journal.clone(),
        directory_source: directory.dataverse.clone(),
        directory_metrics: directory.metrics.clone(),
        catchup: catchup.clone(),
        sync: sync.clone(),
        delivery: config.delivery.enabled.then(|| delivery.health()),
        options,
    });
    let admin_task = tokio::spawn(admin::serve(listeners.admin, admin_state, stopped));
    let (delivery_stop, delivery_stopped) = watch::channel(false);
    let delivery_task = config
        .delivery
        .enabled
        .then(|| delivery.spawn(delivery_stopped, config.shutdown.grace_period));
    let recorded = record::write(
        &config.storage.data_dir,
        &record::GatewayRecord {
            pid: std::process::id(),
            admin: listeners.admin_addr,
            proxy: listeners.proxy_addr,
        },
    );
    if let Err(error) = recorded {
        // The commands then cannot find this gateway; traffic is unaffected.
        tracing::warn!(%error, "cannot write the gateway record in the data directory");
    }
    proxy.set_ready(true);
    Ok(Gateway {
        proxy_addr: listeners.proxy_addr,
        admin_addr: listeners.admin_addr,
        proxy,
        stop,
        server_task,
        proxy_threads,
        admin_task,
        simulator,
        config: Mutex::new(config),
        inspect_metrics,
        recent,
        engine,
        rules_metrics,
        decisions,
        directory_source: directory.file,
        directory_metrics: directory.metrics,
        dataverse_source: directory.dataverse,
        outbox,
        journal,
        delivery_stop,
        delivery_task,
        deliveries: delivery.recent(),
        catchup,
        catchup_task,
        _catchup_runtime: catchup_runtime,
        sync,
        sync_task,
        _sync_runtime: sync_runtime,
        preview_history,
    })
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

    /// The latest observations (at most `RECENT_OBSERVATIONS`), oldest first.
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

    /// The catch-up sweep, when it runs.
    pub fn catchup(&self) -> Option<&Arc<Sweeper>> {
        self.catchup.as_ref()
    }

    pub fn sync(&self) -> Option<&Arc<crate::sync::Syncer>> {
        self.sync.as_ref()
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
    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.outbox
    }

    /// The journal, when it is the configured sink.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// What became of the most recent records delivery settled for good, oldest first.
    pub fn recent_deliveries(&self) -> Vec<Delivered> {
        self.deliveries.snapshot()
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
        settings::check(&config)?;
        let state = ProxyState::build(&settings::proxy(&config), routes, &self.proxy.metrics)?;
        if self.dataverse_source.is_some() || config.directory.dataverse.is_some() {
            // The Dataverse source refreshes on its own schedule; switching sources needs a
            // restart.
            if self.dataverse_source.is_some() != config.directory.dataverse.is_some() {
                tracing::warn!("directory.source changes only on restart; kept the running source");
            }
            let identity_changed = self
                .config
                .lock()
                .map(|c| c.identity != config.identity)
                .unwrap_or(false);
            if identity_changed {
                tracing::warn!(
                    "[identity] changes reach a Dataverse directory only on restart; kept the running names"
                );
            }
        } else {
            let mut source = settings::file_source(&config);
            if let Ok(current) = self.directory_source.lock() {
                // What the options page holds stays laid over the reloaded file.
                source.settings.overlay = current.settings.overlay.clone();
            }
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
        let (source, overrides) = self
            .config
            .lock()
            .map(|c| (c.source.clone(), c.overrides.clone()))
            .unwrap_or_default();
        // Judged once, by `reload` (app::settings::check).
        self.reload(Config::load_with(source.as_deref(), &overrides)?.1)
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
        if let Some(task) = self.catchup_task {
            let _ = task.await;
        }
        if let Some(task) = self.sync_task {
            // A round in progress finishes its current write; what it did not reach, the next
            // start does (every action is idempotent).
            let _ = tokio::time::timeout(grace, task).await;
        }
        if server::drain(&self.proxy, grace).await {
            tracing::info!("drained: every client connection closed");
        } else {
            tracing::warn!(grace = ?grace, "grace period over; closing remaining connections");
        }
        drop(self.proxy_threads);
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
        let inspected_all = self
            .inspect_metrics
            .finished
            .load(std::sync::atomic::Ordering::Acquire)
            >= handed_off;
        let flush = |outbox: Arc<dyn Outbox>| async move {
            matches!(
                tokio::task::spawn_blocking(move || outbox.flush()).await,
                Ok(Ok(()))
            )
        };
        // Every decision of the traffic is committed: the next start need bring no mailbox
        // forward for a crash.
        if flush(self.outbox.clone()).await
            && inspected_all
            && let Some(sweeper) = &self.catchup
        {
            sweeper.forget_traffic();
        }
        let _ = self.delivery_stop.send(true);
        if let Some(task) = self.delivery_task {
            let _ = task.await;
        }
        // The settlements of the last deliveries.
        flush(self.outbox.clone()).await;
        // What the traffic showed, for the next run's previews.
        if let Some((history, store)) = self.preview_history {
            let saved =
                tokio::task::spawn_blocking(move || store.save_history(&history.snapshot()));
            if let Ok(Err(error)) = saved.await {
                tracing::warn!(%error, "the options page's history was not saved");
            }
        }
        if let Ok(config) = self.config.lock() {
            record::remove(&config.storage.data_dir, self.admin_addr);
        }
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
            _ = hangup.recv() => match crate::common::off_the_workers(|| gateway.reload_from_source()) {
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
    let outbox = gateway.config.lock().map(|c| match &c.nats {
        Some(nats) => format!("NATS stream {}", nats.stream),
        None => c.outbox.file.display().to_string(),
    });
    println!("  outbox:         {}", outbox.unwrap_or_default());
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
