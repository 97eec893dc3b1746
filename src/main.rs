//! The `stagegate` command line: `serve`, `check`, `demo`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stagegate::config::store::StoreConfig;
use stagegate::config::{Config, ConfigError, defaults};
use stagegate::ctl::CtlArgs;
use stagegate::demo;
use stagegate::demo::scenario::Scenario;
use stagegate::gateway::{self, GatewayError, ShutdownSignal};
use stagegate::registry::store::{FileStore, etcd};

/// mimalloc instead of the system allocator: each request allocates buffers,
/// headers and futures of many sizes on every worker thread, which glibc serves from
/// its per-thread cache only up to 1 KiB (see the README's Performance section
/// for what it saves).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stagegate",
    version,
    about = "Routes ML inference requests by model stage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; print every error with its field path.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running gateway's admin API (token from STAGEGATE_ADMIN_TOKEN).
    Ctl(CtlArgs),
    /// Manage the control-plane store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Run demo model servers and a gateway in front of them.
    Demo {
        #[arg(long, default_value = defaults::LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = defaults::ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// `rollout` and `bad-canary` drive demo traffic through a rollout and exit.
        #[arg(long, value_enum, default_value = "interactive")]
        scenario: Scenario,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy a file state directory into the config's (empty) etcd prefix.
    Migrate {
        /// The config whose `[store]` names the etcd cluster and prefix.
        #[arg(long, short)]
        config: PathBuf,
        /// The state directory to copy (no gateway may be running on it).
        #[arg(long)]
        from_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(&config),
        Command::Demo {
            listen,
            admin_listen,
            scenario,
        } => run_demo(listen, admin_listen, scenario),
        Command::Ctl(args) => ctl(&args),
        Command::Store {
            action: StoreAction::Migrate { config, from_dir },
        } => migrate(&config, &from_dir),
    }
}

fn migrate(path: &Path, from_dir: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return config_failed(&error),
    };
    let StoreConfig::Etcd(etcd) = &config.store else {
        return failed(&format!(
            "{}: [store] is not kind = \"etcd\"; there is nothing to migrate into",
            path.display()
        ));
    };
    let loaded = match FileStore::open(from_dir) {
        Ok((_, loaded)) => loaded,
        Err(error) => return failed(&error.to_string()),
    };
    let runtime = match runtime(1) {
        Ok(runtime) => runtime,
        Err(error) => return failed(&format!("cannot start the runtime: {error}")),
    };
    match runtime.block_on(etcd::migrate(etcd, &loaded.ledger)) {
        Ok(()) => {
            println!(
                "copied {} (revision {}, {} models) into etcd prefix {}",
                from_dir.display(),
                loaded.ledger.revision,
                loaded.ledger.models.len(),
                etcd.prefix
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(&error.to_string()),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let versions: usize = config.models.iter().map(|m| m.versions.len()).sum();
            println!(
                "{}: ok ({} models, {versions} versions)",
                path.display(),
                config.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(error) => config_failed(&error),
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return config_failed(&error),
    };
    let runtime = match runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => return failed(&format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async {
        let started = async {
            Ok::<_, GatewayError>((ShutdownSignal::install()?, gateway::start(&config).await?))
        };
        match started.await {
            Ok((mut signal, running)) => {
                gateway::reload_on_sighup(running.registry().clone());
                signal.recv().await;
                tracing::info!(
                    "shutdown signal received; draining (a second signal exits at once)"
                );
                tokio::spawn(async move {
                    signal.recv().await;
                    eprintln!("second shutdown signal: exiting without waiting for the drain");
                    std::process::exit(130);
                });
                let drained = running.shutdown().await;
                if drained.abandoned > 0 {
                    eprintln!(
                        "warning: {} connections were still open at the drain timeout",
                        drained.abandoned
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => failed(&error.to_string()),
        }
    })
}

fn run_demo(listen: SocketAddr, admin_listen: SocketAddr, scenario: Scenario) -> ExitCode {
    let runtime = match runtime(std::thread::available_parallelism().map_or(2, |n| n.get())) {
        Ok(runtime) => runtime,
        Err(error) => return failed(&format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async {
        let mut signal = match ShutdownSignal::install() {
            Ok(signal) => signal,
            Err(error) => return failed(&error.to_string()),
        };
        let demo = match demo::start(listen, admin_listen).await {
            Ok(demo) => demo,
            Err(error) => return failed(&error.to_string()),
        };
        if scenario == Scenario::Interactive {
            println!("{}", demo.instructions());
            signal.recv().await;
            demo.shutdown().await;
            return ExitCode::SUCCESS;
        }
        let expected = if scenario == Scenario::Rollout {
            "succeeded"
        } else {
            "rolled_back"
        };
        let outcome =
            stagegate::demo::scenario::run(&demo, scenario, &mut |line| println!("{line}")).await;
        demo.shutdown().await;
        match outcome {
            Ok(phase) if phase == expected => ExitCode::SUCCESS,
            Ok(phase) => failed(&format!("the rollout ended {phase}, expected {expected}")),
            Err(error) => failed(&error),
        }
    })
}

fn ctl(args: &CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return failed(&format!("cannot start the runtime: {error}")),
    };
    match runtime.block_on(stagegate::ctl::run(args)) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => failed(&error.describe()),
    }
}

fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    stagegate::runtime::builder(worker_threads)
        .enable_all()
        .build()
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn config_failed(error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

fn failed(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
