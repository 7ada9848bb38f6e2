//! The `trackgate` command: parses arguments, loads configuration, starts logging and the
//! runtime, and maps failures to exit codes (0 success, 1 failure or invalid configuration,
//! 2 usage). Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use trackgate::config::{Config, RuntimeModel};
use trackgate::simulate::standalone;
use trackgate::{app, ops, replay, telemetry, tls};

/// mimalloc instead of glibc's allocator: the proxy allocates on its workers and frees on the
/// inspection thread, where glibc spent ~7 % of a request's CPU, and glibc kept the memory of
/// 10 000 closed connections; mimalloc is faster across threads and returns freed pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trackgate",
    version,
    about = "Outlook/Exchange protocol gateway that tracks mail into Dynamics 365"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See the whole pipeline: the Exchange and Dataverse simulators and the gateway (TLS) on
    /// free loopback ports, a recorded working morning replayed through it as Outlook and a
    /// phone would, then a table of each message's decision and the CRM record that landed.
    Demo {
        /// Leave everything running afterwards and print the URLs and curl lines to poke it.
        #[arg(long)]
        keep_running: bool,
    },
    /// Run the gateway. Without --config: embedded defaults, in front of the built-in Exchange
    /// simulator, on TLS with development certificates.
    Serve {
        #[arg(long, env = "TRACKGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Where clients connect (overrides `listener.address`), e.g. 127.0.0.1:9443.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Where the admin endpoints listen (overrides `admin.address`), e.g. 127.0.0.1:9902.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Validate a configuration file (without one, the embedded defaults plus TRACKGATE_*
    /// environment overrides) and print it resolved, secrets redacted.
    Check {
        #[arg(long, env = "TRACKGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Also contact the configured Dataverse environment: a token, WhoAmI, the application
        /// user's privileges, every directory user and mailbox. Exit 1 on any problem.
        #[arg(long)]
        online: bool,
    },
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a simulator on its own (for load tests and trying clients).
    Simulate {
        #[command(subcommand)]
        command: SimulateCommand,
    },
    /// Dry run of the rules over recorded exchanges: one JSON decision per line, with the
    /// reasoning. Give fixture folders (or their fixture.toml), folders of fixtures, or .jsonl
    /// files of observations; they are replayed in order, memory carrying over.
    Replay {
        /// Directory file (TOML or JSON); without it, the embedded example directory.
        #[arg(long)]
        directory: Option<PathBuf>,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Inspect recorded exchanges and print one JSON object per observation per line.
    /// Give fixture folders, or a request and/or response file (raw HTTP message or bare body).
    Inspect(replay::InspectInputs),
    /// The outbox of tracked emails waiting for the CRM: stats, pending records, dead letters,
    /// and retry or skip of one record. Works on the file when no gateway runs, otherwise
    /// through the running gateway's admin listener (with admin.token).
    Outbox {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The fleet's NATS JetStream outbox (`outbox.backend = "nats"`).
    Nats {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// The journal sink (the default when no CRM is configured): what was "delivered".
    Journal {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// The catch-up sweep of the running gateway: every mailbox with its last sweep, or sweep
    /// one mailbox next. Asks the gateway recorded in the data directory (with admin.token).
    Catchup {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CatchupCommand,
    },
    /// CRM ⇄ Exchange synchronisation of the running gateway: every synchronising mailbox with
    /// its last run, links and dead letters, or run one mailbox next (its dead letters retried).
    Sync {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CatchupCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum CatchupCommand {
    /// Mailboxes, their last run, and what is pending or failed.
    Status,
    /// Run this mailbox next.
    Run { mailbox: String },
}

#[derive(Subcommand)]
enum NatsCommand {
    /// Create or update the records' stream, the dead-letter stream and the shared consumer,
    /// with `nats.replicas` replicas. Once per fleet, before the gateways start.
    Setup,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Counts: pending, in flight, dead letters, delivered ids remembered, oldest age, file size.
    Stats,
    /// Pending records, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Dead letters with the CRM's answer.
    Dead {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a dead letter back in the queue (attempts reset).
    Retry { id: uuid::Uuid },
    /// Drop a pending or dead record without delivering it.
    Skip { id: uuid::Uuid },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Journal entries in id order.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One entry.
    Show { id: uuid::Uuid },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA and a leaf for localhost/127.0.0.1/::1 into DIR.
    Dev {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// The Dataverse simulator (Web API subset, token endpoint, fault injection under /_sim/).
    Dataverse {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Seed users, queues, contacts, accounts, leads and emails from a directory file
        /// (default: the embedded example directory).
        #[arg(long)]
        directory: Option<PathBuf>,
        /// Require these client credentials at the token endpoint (and a token on the API).
        #[arg(long, requires = "client_secret")]
        client_id: Option<String>,
        #[arg(long, requires = "client_id")]
        client_secret: Option<String>,
        /// How long an issued token is accepted, e.g. 60s (Entra's last about an hour).
        #[arg(long, default_value = "3599s", value_parser = humantime::parse_duration)]
        token_lifetime: std::time::Duration,
        /// Switch strictness off, comma-separated: undeclared (unknown sets and columns, for
        /// custom tables), closed-activities (writes to completed activities),
        /// closed-regarding (a completed activity's regarding only), any-caller
        /// (CallerObjectId of no user).
        #[arg(long, default_value = "")]
        lenient: String,
    },
    /// The Exchange simulator: EWS and Graph from a stateful mailbox store, Autodiscover and
    /// anything else from recorded fixtures.
    Exchange {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Serve TLS with development certificates kept in this folder.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// none, bearer, ntlm, or basic:USER:PASSWORD
        #[arg(long, default_value = "none")]
        auth: String,
        /// A folder of fixture folders instead of the embedded ones.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Seed the mailbox store from this TOML file instead of the embedded Contoso mailboxes.
        #[arg(long, conflicts_with = "fixtures_only")]
        mailboxes: Option<PathBuf>,
        /// Answer every request with its recorded fixture, without the mailbox store (the load
        /// harness replays recorded ids, which only the fixtures know).
        #[arg(long)]
        fixtures_only: bool,
        /// Tokio worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trackgate: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: many errors already name their cause in their
/// own message (`cannot read X: <os error>`), and printing the chain as well said it twice.
fn report(error: &anyhow::Error) -> String {
    let mut out = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Dispatches a command to the library and maps its result to an exit code: one arm per
/// subcommand, which is all that keeps it long.
fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo { keep_running } => runtime(None)?.block_on(demo(keep_running)),
        Command::Serve {
            config,
            listen,
            admin,
        } => {
            let overrides = [
                listen.map(|a| (app::PROXY_LISTENER.env, a)),
                admin.map(|a| (app::ADMIN_LISTENER.env, a)),
            ];
            let overrides: Vec<(String, String)> = overrides
                .into_iter()
                .flatten()
                .map(|(env, addr)| (env.to_owned(), addr.to_string()))
                .collect();
            // Judged once, by the start (app::settings::check).
            let (_, config) = Config::load_with(config.as_deref(), &overrides)?;
            telemetry::init_logging(&config.logging.level, config.logging.format);
            // Under `per_core` the proxy runs on threads of its own; the rest needs one.
            let workers = match config.runtime.model {
                RuntimeModel::Shared => config.runtime.worker_threads,
                RuntimeModel::PerCore => Some(1),
            };
            let runtime = runtime(workers)?;
            runtime.spawn(trackgate::common::memory::give_back_freed_memory());
            runtime.block_on(app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, online } => {
            let report = ops::check(config.as_deref())?;
            print!("{}", report.resolved);
            eprint!("{}", report.directory?);
            if !online {
                return Ok(ExitCode::SUCCESS);
            }
            tls::install_crypto_provider();
            let findings = runtime(Some(1))?.block_on(ops::check_online(config.as_deref()))?;
            let Some(findings) = findings else {
                eprintln!("online: crm.sink is not dataverse; nothing to contact");
                return Ok(ExitCode::SUCCESS);
            };
            for finding in &findings {
                eprintln!("online {finding}");
            }
            let problems = findings.iter().filter(|f| !f.ok).count();
            if problems == 0 {
                eprintln!("online: the environment is ready for delivery");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "online: {problems} problem(s); deliveries would fail until they are fixed"
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Certs {
            command: CertsCommand::Dev { out },
        } => {
            tls::install_crypto_provider();
            let certs = tls::generate_dev_certs(&out)?;
            println!("CA (trust this):  {}", certs.ca.display());
            println!("certificate:      {}", certs.cert.display());
            println!("private key:      {}", certs.key.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { command } => simulate(command),
        Command::Replay { directory, inputs } => {
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let s = replay::replay_files(directory, &inputs, stdout, |name, problem| {
                eprintln!("{name}: {problem}")
            })?;
            eprintln!(
                "replayed {} exchanges, {} observations: {} tracked, {} ignored",
                s.exchanges, s.observations, s.tracked, s.ignored
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect(inputs) => {
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let all = replay::inspect_recorded(&inputs, stdout, |p| eprintln!("{p}"))?;
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Outbox { config, command } => {
            let config = load_config(config.as_deref())?;
            let action = match command {
                OutboxCommand::Stats => ops::OutboxAction::Stats,
                OutboxCommand::List { limit } => ops::OutboxAction::Pending { limit },
                OutboxCommand::Dead { limit } => ops::OutboxAction::Dead { limit },
                OutboxCommand::Retry { id } => ops::OutboxAction::Retry(id),
                OutboxCommand::Skip { id } => ops::OutboxAction::Skip(id),
            };
            let (text, source) = ops::outbox(&config, action)?;
            eprintln!("source: {source}");
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Nats { config, command } => {
            let config = load_config(config.as_deref())?;
            match command {
                NatsCommand::Setup => print!("{}", ops::nats_setup(&config)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal { config, command } => {
            let config = load_config(config.as_deref())?;
            let action = match command {
                JournalCommand::List { limit } => ops::JournalAction::List { limit },
                JournalCommand::Show { id } => ops::JournalAction::Show(id),
            };
            let (text, source) = ops::journal(&config, action)?;
            eprintln!("source: {source}");
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Catchup { config, command } => mailbox_command(config, command, ops::catchup),
        Command::Sync { config, command } => mailbox_command(config, command, ops::sync),
        Command::Version => {
            println!("trackgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The demo until it is done (or, with --keep-running, until SIGTERM or Ctrl-C).
async fn demo(keep_running: bool) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered first: a signal at any point stops the demo and removes its data.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let demo = trackgate::demo::run(keep_running, |step| eprintln!("{step}"));
    let (report, running) = tokio::select! {
        result = demo => result?,
        _ = terminate.recv() => return Ok(ExitCode::FAILURE),
        _ = interrupt.recv() => return Ok(ExitCode::FAILURE),
    };
    println!();
    print!("{}", trackgate::demo::table(&report));
    if let Some(running) = running {
        println!();
        print!("{}", running.instructions());
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        running.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// A simulator on its own, until Ctrl-C.
fn simulate(command: SimulateCommand) -> anyhow::Result<ExitCode> {
    match command {
        SimulateCommand::Dataverse {
            listen,
            directory,
            client_id,
            client_secret,
            token_lifetime,
            lenient,
        } => {
            let mut options =
                standalone::dataverse_options(directory.as_deref(), client_id.zip(client_secret))?;
            options.token_lifetime = token_lifetime;
            options.leniency = trackgate::simulate::dataverse::Leniency::parse(&lenient)
                .map_err(|e| anyhow::anyhow!("--lenient: {e}"))?;
            runtime(Some(1))?.block_on(standalone::dataverse(listen, options))?;
        }
        SimulateCommand::Exchange {
            listen,
            tls_dir,
            auth,
            fixtures,
            mailboxes,
            fixtures_only,
            threads,
        } => {
            let mut options =
                standalone::exchange_options(&auth, fixtures.as_deref(), tls_dir.as_deref())?;
            if !fixtures_only {
                options = options.with_store(standalone::mailbox_store(mailboxes.as_deref())?);
            }
            runtime((threads > 0).then_some(threads))?
                .block_on(standalone::exchange(listen, options))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration file, or the embedded defaults, judged as a start would judge it.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(app::settings::load(path, &[])?)
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.build().context("cannot start the async runtime")
}

/// `catchup` or `sync`: `status`, or `run MAILBOX`, asked of the running gateway.
fn mailbox_command(
    config: Option<PathBuf>,
    command: CatchupCommand,
    run: fn(&Config, ops::MailboxAction) -> ops::Answer,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config.as_deref())?;
    let action = match command {
        CatchupCommand::Status => ops::MailboxAction::Status,
        CatchupCommand::Run { mailbox } => ops::MailboxAction::Run(mailbox),
    };
    let (text, source) = run(&config, action)?;
    eprintln!("source: {source}");
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
