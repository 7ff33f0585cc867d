//! The `wicket` command line: `run` serves a configuration until SIGTERM or
//! SIGINT (SIGHUP reloads), `validate` checks one and exits non-zero with its
//! errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "wicket",
    version,
    about = "Edge API gateway whose every policy is a WebAssembly component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration until SIGTERM or SIGINT, then drain.
    Run {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration (syntax, references, plugins and their configs)
    /// and exit non-zero with every error found.
    Validate {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Parse the arguments and run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WICKET_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wicket: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Validate { config } => match crate::gateway::validate(&config).await {
                Ok(s) => {
                    println!("{}: ok ({} routes)", config.display(), s.route_count());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{}: invalid configuration", config.display());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    ExitCode::FAILURE
                }
            },
            Command::Run { config } => run(config).await,
        }
    })
}

async fn run(config: PathBuf) -> ExitCode {
    let gateway = match crate::Gateway::start(crate::Options::new(&config)).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("wicket: {}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let signals = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    };
    let shared = gateway.shared().clone();
    let hup = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return std::future::pending::<()>().await;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = shared.reload().await;
        }
    };
    tokio::select! {
        _ = signals => {}
        _ = hup => {}
    }
    gateway.shutdown().await;
    ExitCode::SUCCESS
}
