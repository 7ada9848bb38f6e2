//! The `trackgate` command: parses arguments, loads configuration, starts logging and the
//! runtime, and maps failures to exit codes (0 success, 1 failure or invalid configuration,
//! 2 usage). Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use trackgate::config::{Config, RawConfig};
use trackgate::simulate::{
    AuthMode, DataverseOptions, DataverseSimulator, ExchangeSimulator, FixtureSet, SimulatorOptions,
};
use trackgate::{app, ops, telemetry, tls};

/// mimalloc instead of glibc's allocator: the proxy allocates on its workers and frees on the
/// inspection thread, where glibc spent ~7 % of a request's CPU, and glibc kept the memory of
/// 10 000 closed connections; mimalloc is faster across threads and returns freed pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often an otherwise idle gateway lets the allocator return freed memory.
const MEMORY_HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Larger than mimalloc v3's largest size class (512 KiB), so it gets a page of its own.
const WHOLE_PAGE: usize = 1 << 20;

/// mimalloc returns freed pages to the system (purges them) only from inside a later free of a
/// whole page, once its purge delay (1 s) has passed. A gateway that just closed 10 000 idle
/// connections and then sees no traffic would otherwise keep their memory for good. Freeing one
/// allocation that is larger than mimalloc's largest size class releases a whole page, which runs
/// the purge; the buffer is never written, so it costs at most the page's own header in resident
/// memory. Safe Rust cannot call `mi_collect`, and `unsafe_code` is forbidden.
async fn give_back_freed_memory() {
    let mut tick = tokio::time::interval(MEMORY_HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        drop(std::hint::black_box(Vec::<u8>::with_capacity(WHOLE_PAGE)));
    }
}

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
    },
    /// Validate a configuration file and print it resolved, secrets redacted.
    Check {
        #[arg(long)]
        config: PathBuf,
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
    Inspect {
        /// Fixture folders (each with a fixture.toml).
        fixtures: Vec<PathBuf>,
        #[arg(long)]
        request: Option<PathBuf>,
        #[arg(long)]
        response: Option<PathBuf>,
        /// Request method (default POST, or the raw request's).
        #[arg(long)]
        method: Option<String>,
        /// Request path (default /EWS/Exchange.asmx, or the raw request's).
        #[arg(long)]
        path: Option<String>,
        /// Extra request header, 'Name: value' (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Response status (default 200, or the raw response's).
        #[arg(long)]
        status: Option<u16>,
    },
    /// The outbox of tracked emails waiting for the CRM: stats, pending records, dead letters,
    /// and retry or skip of one record. Works on the file when no gateway runs, otherwise
    /// through the running gateway's admin listener (with admin.token).
    Outbox {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The journal sink (the default when no CRM is configured): what was "delivered".
    Journal {
        #[arg(long, env = "TRACKGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Print the version.
    Version,
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
    },
    /// The Exchange simulator (EWS, Graph, Autodiscover from fixtures).
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
            eprintln!("trackgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Outbox { config, command } => {
            let config = load_config(config.as_deref())?;
            let action = match command {
                OutboxCommand::Stats => ops::OutboxAction::Stats,
                OutboxCommand::List { limit } => ops::OutboxAction::Pending { limit },
                OutboxCommand::Dead { limit } => ops::OutboxAction::Dead { limit },
                OutboxCommand::Retry { id } => ops::OutboxAction::Retry(id),
                OutboxCommand::Skip { id } => ops::OutboxAction::Skip(id),
            };
            print!("{}", ops::outbox(&config, action)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal { config, command } => {
            let config = load_config(config.as_deref())?;
            let action = match command {
                JournalCommand::List { limit } => ops::JournalAction::List { limit },
                JournalCommand::Show { id } => ops::JournalAction::Show(id),
            };
            print!("{}", ops::journal(&config, action)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            command:
                SimulateCommand::Dataverse {
                    listen,
                    directory,
                    client_id,
                    client_secret,
                },
        } => {
            let text = match &directory {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => trackgate::directory::file::EMBEDDED_EXAMPLE.to_owned(),
            };
            let seed: trackgate::directory::model::DirectoryDocument = if directory
                .as_ref()
                .is_some_and(|p| p.extension().is_some_and(|e| e == "json"))
            {
                serde_json::from_str(&text)?
            } else {
                toml::from_str(&text)?
            };
            let options = DataverseOptions {
                credentials: client_id.zip(client_secret),
                seed: Some(seed),
                ..DataverseOptions::default()
            };
            runtime(Some(1))?.block_on(async move {
                let sim = DataverseSimulator::start(listen, options).await?;
                println!(
                    "dataverse simulator ready url={} token_url={}",
                    sim.url(),
                    sim.token_url()
                );
                tokio::signal::ctrl_c().await?;
                sim.stop().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("trackgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            fixtures,
            request,
            response,
            method,
            path,
            headers,
            status,
        } => inspect_command(fixtures, request, response, method, path, headers, status),
        Command::Replay { directory, inputs } => replay_command(directory, inputs),
        Command::Check { config } => match Config::load(&config) {
            Ok((raw, validated)) => {
                print!("{}", raw.to_redacted_toml());
                if let Some(dv) = &validated.directory.dataverse {
                    // Not contacted here: `check` must work offline, before a deploy.
                    eprintln!("configuration {} is valid", config.display());
                    eprintln!(
                        "directory: from Dataverse {} (replica {}), loaded at start",
                        dv.source.url,
                        dv.source.replica_file.display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                // The directory file is part of what must be right before a deploy.
                let source = trackgate::directory::FileSource {
                    path: validated.directory.file.clone(),
                    max_size: validated.directory.max_file_size,
                };
                match source.load() {
                    Ok(directory) => {
                        eprintln!("configuration {} is valid", config.display());
                        eprintln!("directory: {:?}", directory.counts());
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(error) => {
                        eprintln!("trackgate: {error}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            Err(error) => {
                eprintln!("trackgate: {error}");
                Ok(ExitCode::FAILURE)
            }
        },
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
        Command::Demo { keep_running } => runtime(None)?.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            // Registered first: a signal at any point stops the demo and removes its data.
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let demo = trackgate::demo::run(keep_running, |step| eprintln!("{step}"));
            let (rows, running) = tokio::select! {
                result = demo => result?,
                _ = terminate.recv() => return anyhow::Ok(ExitCode::FAILURE),
                _ = interrupt.recv() => return anyhow::Ok(ExitCode::FAILURE),
            };
            println!();
            print!("{}", trackgate::demo::table(&rows));
            if let Some(running) = running {
                println!();
                print!("{}", running.instructions());
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                running.stop().await;
            }
            anyhow::Ok(ExitCode::SUCCESS)
        }),
        Command::Serve { config } => {
            let (_raw, config): (RawConfig, Config) = match &config {
                Some(path) => Config::load(path)?,
                None => Config::embedded()?,
            };
            telemetry::init_logging(&config.logging);
            let runtime = runtime(config.runtime.worker_threads)?;
            runtime.spawn(give_back_freed_memory());
            runtime.block_on(app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            command:
                SimulateCommand::Exchange {
                    listen,
                    tls_dir,
                    auth,
                    fixtures,
                    threads,
                },
        } => {
            tls::install_crypto_provider();
            let mut options = SimulatorOptions::new(
                "standalone",
                match fixtures {
                    Some(dir) => FixtureSet::from_dir(&dir)?,
                    None => FixtureSet::embedded()?,
                },
            );
            options.auth = parse_auth(&auth)?;
            if let Some(dir) = tls_dir {
                let certs = tls::ensure_dev_certs(&dir)?;
                options.tls = Some(tls::server_config(
                    &certs.cert,
                    &certs.key,
                    &[b"h2".to_vec(), b"http/1.1".to_vec()],
                )?);
            }
            runtime((threads > 0).then_some(threads))?.block_on(async move {
                let sim = ExchangeSimulator::start(listen, options).await?;
                println!("simulator ready url={}", sim.url());
                tokio::signal::ctrl_c().await?;
                sim.stop().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration file, or the embedded defaults.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?.1,
        None => Config::embedded()?.1,
    })
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.build().context("cannot start the async runtime")
}

fn parse_auth(text: &str) -> anyhow::Result<AuthMode> {
    Ok(match text {
        "none" => AuthMode::None,
        "bearer" => AuthMode::Bearer,
        "ntlm" => AuthMode::Ntlm,
        other => match other.strip_prefix("basic:").and_then(|r| r.split_once(':')) {
            Some((user, password)) => AuthMode::Basic {
                user: user.into(),
                password: password.into(),
            },
            None => anyhow::bail!("--auth: expected none, bearer, ntlm or basic:USER:PASSWORD"),
        },
    })
}

/// A recorded message: raw HTTP (request or status line, headers, body) or a bare body.
struct Recorded {
    first_line: Option<(String, String)>,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
}

fn read_recorded(path: &std::path::Path, response: bool) -> anyhow::Result<Recorded> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let looks_raw = if response {
        data.starts_with(b"HTTP/1.")
    } else {
        let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        line.windows(7).any(|w| w == b" HTTP/1")
    };
    if !looks_raw {
        return Ok(Recorded {
            first_line: None,
            headers: Vec::new(),
            body: data.into(),
        });
    }
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let (first_line, parsed, head_len) = if response {
        let mut r = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(n) = r.parse(&data)? else {
            anyhow::bail!("{}: incomplete HTTP response head", path.display());
        };
        (
            ("".to_owned(), r.code.unwrap_or(200).to_string()),
            r.headers.to_vec(),
            n,
        )
    } else {
        let mut r = httparse::Request::new(&mut storage);
        let httparse::Status::Complete(n) = r.parse(&data)? else {
            anyhow::bail!("{}: incomplete HTTP request head", path.display());
        };
        (
            (
                r.method.unwrap_or("POST").to_owned(),
                r.path.unwrap_or("/").to_owned(),
            ),
            r.headers.to_vec(),
            n,
        )
    };
    let headers = parsed
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Recorded {
        first_line: Some(first_line),
        headers,
        body: bytes::Bytes::from(data).slice(head_len..),
    })
}

fn replay_command(directory: Option<PathBuf>, inputs: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    use trackgate::directory::{DirectoryHandle, FileSource};
    use trackgate::rules::{Engine, MemoryLimits, RulesLimits};
    let source = FileSource {
        path: directory,
        max_size: u64::MAX,
    };
    let snapshot = match source.load() {
        Ok(d) => d,
        Err(error) => {
            eprintln!("trackgate: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let engine = Engine::new(
        DirectoryHandle::new(snapshot),
        MemoryLimits::default(),
        RulesLimits::default(),
    );
    let recorded = trackgate::replay::collect(&inputs)?;
    let stdout = std::io::stdout().lock();
    let (summary, _) = trackgate::replay::replay(
        &engine,
        &recorded,
        std::io::BufWriter::new(stdout),
        |name, problem| eprintln!("{name}: {problem}"),
    )?;
    eprintln!(
        "replayed {} exchanges, {} observations: {} tracked, {} ignored",
        summary.exchanges, summary.observations, summary.tracked, summary.ignored
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn inspect_command(
    fixtures: Vec<PathBuf>,
    request: Option<PathBuf>,
    response: Option<PathBuf>,
    method: Option<String>,
    path: Option<String>,
    headers: Vec<String>,
    status: Option<u16>,
) -> anyhow::Result<ExitCode> {
    use trackgate::inspect::{self, InspectLimits};
    let mut captures = Vec::new();
    let extra: Vec<(String, String)> = headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((n, v)) => Ok((n.trim().to_owned(), v.trim().to_owned())),
            None => anyhow::bail!("--header {h:?}: write it as 'Name: value'"),
        })
        .collect::<anyhow::Result<_>>()?;
    for dir in &fixtures {
        let f = trackgate::simulate::fixtures::Fixture::load(dir)?;
        captures.push((f.name.clone(), f.to_capture(&extra)));
    }
    if request.is_some() || response.is_some() {
        let req = request
            .as_deref()
            .map(|p| read_recorded(p, false))
            .transpose()?;
        let resp = response
            .as_deref()
            .map(|p| read_recorded(p, true))
            .transpose()?;
        let (raw_method, raw_path) = req
            .as_ref()
            .and_then(|r| r.first_line.clone())
            .unwrap_or_else(|| ("POST".into(), "/EWS/Exchange.asmx".into()));
        let raw_status = resp
            .as_ref()
            .and_then(|r| r.first_line.as_ref())
            .and_then(|(_, s)| s.parse().ok())
            .unwrap_or(200);
        let mut h = req.as_ref().map(|r| r.headers.clone()).unwrap_or_default();
        h.extend(extra.iter().cloned());
        captures.push((
            "exchange".to_owned(),
            inspect::capture_from_parts(
                method.as_deref().unwrap_or(&raw_method),
                path.as_deref().unwrap_or(&raw_path),
                &h,
                req.map(|r| r.body).unwrap_or_default(),
                status.unwrap_or(raw_status),
                &resp.as_ref().map(|r| r.headers.clone()).unwrap_or_default(),
                resp.map(|r| r.body).unwrap_or_default(),
            ),
        ));
    }
    if captures.is_empty() {
        anyhow::bail!("nothing to inspect: give fixture folders, or --request and/or --response");
    }
    let mut failed = false;
    for (name, capture) in captures {
        match inspect::inspect(&capture, InspectLimits::default()) {
            Ok(found) => {
                for code in found.failures {
                    eprintln!("{name}: EWS failure {code} (no observation)");
                }
                for o in found.observations {
                    println!("{}", serde_json::to_string(&o)?);
                }
            }
            Err(error) => {
                failed = true;
                eprintln!("{name}: not inspected ({}): {error}", error.kind());
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
