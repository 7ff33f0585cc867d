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
    /// Serve a configuration until SIGTERM or SIGINT, then drain. SIGHUP and
    /// `POST /reload` on the admin listener reload it.
    Run {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not reload when the file or a plugin module changes; reload
        /// only on SIGHUP or `POST /reload`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a configuration (syntax, references, plugins and their configs)
    /// and exit non-zero with every error found.
    Validate {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Compile every plugin of a configuration into the module cache, so a
    /// gateway started later (from a container image, say) compiles nothing.
    Compile {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work on plugins without a running gateway.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Start a policy from the Python or JavaScript template: a folder with
    /// the policy, its unit tests, a spec, a build script and its own copy of
    /// the contract and the SDK.
    New {
        /// The language.
        #[arg(long)]
        lang: crate::plugin::scaffold::Lang,
        /// The plugin's name, also its folder's.
        name: String,
        /// Where to create the folder (default: here).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Load a component without sockets, run the contract checks and a
    /// behaviour spec, and exit non-zero if any check fails.
    Test {
        /// The component (`.wasm`).
        module: PathBuf,
        /// A behaviour spec (YAML); without one only the contract checks
        /// run, with the config `{}`.
        #[arg(long, short)]
        spec: Option<PathBuf>,
        /// The memory cap in MiB (default: the language's).
        #[arg(long)]
        memory_mb: Option<u32>,
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
        // A broken log pipe must cost log lines, never requests: the default
        // reports write errors with `eprintln!`, which panics on that pipe.
        .log_internal_errors(false)
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
            Command::Run { config, no_watch } => run(config, !no_watch).await,
            Command::Compile { config } => compile(&config).await,
            Command::Plugin {
                command: PluginCommand::New { lang, name, dir },
            } => match crate::plugin::scaffold::new(lang, &name, &dir) {
                Ok(path) => {
                    println!("created {}: run {}/build", path.display(), path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wicket: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Plugin {
                command:
                    PluginCommand::Test {
                        module,
                        spec,
                        memory_mb,
                    },
            } => plugin_test(&module, spec.as_deref(), memory_mb).await,
        }
    })
}

async fn compile(config: &std::path::Path) -> ExitCode {
    let compiled = match crate::gateway::compile(config).await {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration", config.display());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for c in &compiled {
        match &c.result {
            Ok((language, true)) => println!("{}: already cached ({language})", c.plugin),
            Ok((language, false)) => println!(
                "{}: compiled ({language}) in {:.1} s",
                c.plugin,
                c.elapsed.as_secs_f64()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", c.plugin);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn plugin_test(
    module: &std::path::Path,
    spec: Option<&std::path::Path>,
    memory_mb: Option<u32>,
) -> ExitCode {
    use crate::plugin::conformance;
    let spec = match spec.map(conformance::read_spec).transpose() {
        Ok(s) => s.unwrap_or(conformance::Spec {
            config: None,
            hooks: None,
            upstreams: Vec::new(),
            invalid_configs: Vec::new(),
            cases: Vec::new(),
        }),
        Err(e) => {
            eprintln!("wicket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limits = crate::config::Limits {
        memory_mb,
        ..Default::default()
    };
    let cache = crate::plugin::RuntimeOptions::from_config(&Default::default()).module_cache;
    let report = conformance::run(module, &spec, cache, Some(limits)).await;
    println!("{}\n{report}", module.display());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(config: PathBuf, watch: bool) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    // Register the handlers before anything else: a signal that arrives while
    // the gateway starts must be handled, not take the default action.
    let (mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(t), Ok(i), Ok(h), Ok(u)) => (t, i, h, u),
        _ => {
            eprintln!("wicket: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let mut options = crate::Options::new(&config);
    options.watch = watch;
    let gateway = match crate::Gateway::start(options).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("wicket: {}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // The outcome is logged, counted and shown on /status.
                let _ = gateway.shared().reload().await;
            }
            _ = usr1.recv() => {
                // logrotate's postrotate: the file was moved away.
                match &gateway.shared().current().access_log {
                    Some(log) => log.reopen(),
                    None => tracing::info!("SIGUSR1: no access log to reopen"),
                }
            }
        }
    }
    gateway.shutdown().await;
    ExitCode::SUCCESS
}
