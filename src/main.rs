//! The `trackgate` command: parses arguments, loads configuration, starts logging and the
//! runtime, and maps failures to exit codes (0 success, 1 failure or invalid configuration,
//! 2 usage). Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use trackgate::config::{Config, RawConfig};
use trackgate::simulate::{AuthMode, ExchangeSimulator, FixtureSet, SimulatorOptions};
use trackgate::{app, telemetry, tls};

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
    /// Print the version.
    Version,
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
        Command::Version => {
            println!("trackgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match Config::load(&config) {
            Ok((raw, _)) => {
                print!("{}", raw.to_redacted_toml());
                eprintln!("configuration {} is valid", config.display());
                Ok(ExitCode::SUCCESS)
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
        Command::Serve { config } => {
            let (_raw, config): (RawConfig, Config) = match &config {
                Some(path) => Config::load(path)?,
                None => Config::embedded()?,
            };
            telemetry::init_logging(&config.logging);
            let runtime = runtime(config.runtime.worker_threads)?;
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
