//! `silo-proxy-server`: parse the command line, load and validate the
//! configuration, set up logging and signals, and hand over to the library.

/// mimalloc instead of glibc malloc: the request path allocates small
/// buffers on one worker thread and frees them on another, which glibc's
/// per-thread arenas handle poorly. silo-bench, the server built both ways,
/// two interleaved runs: 8-29 % less server CPU per request or MB with
/// mimalloc (most often ≈ 10 %). Built without transparent huge pages
/// (`no_thp`, workspace Cargo.toml): with them, an idle agent cost the
/// server ≈ 64 instead of 42-50 KiB (1,000-3,000 agents), and re-faulting
/// purged 2 MiB pages took 5-7 % of the CPU of a download.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use silo_core::config::{ConfigSource, load};
use silo_server::admin_cli;
use silo_server::config::{SECRET_KEYS, ServerConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "silo-proxy-server",
    version,
    about = "Reverse HTTP tunnel server: carries HTTP requests to agents behind NAT"
)]
struct Cli {
    /// Configuration file (default: application.yaml or application.yml in
    /// the working directory, if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print its summary and exit.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Manage provision keys on a running server.
    Keys(admin_cli::KeysArgs),
    /// List agents of a running server.
    Agents(admin_cli::AgentsArgs),
    /// List or revoke agent certificates on a running server.
    Certs(admin_cli::CertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_server(cli.config, cli.check_config),
        Command::Keys(a) => run_admin(cli.config, admin_cli::AdminCommand::Keys(a)),
        Command::Agents(a) => run_admin(cli.config, admin_cli::AdminCommand::Agents(a)),
        Command::Certs(a) => run_admin(cli.config, admin_cli::AdminCommand::Certs(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo-proxy-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_server(config_file: Option<PathBuf>, check_only: bool) -> anyhow::Result<()> {
    let loaded = load::<ServerConfig>(&ConfigSource::for_process(config_file))?;
    let config = loaded.config;
    config.validate()?;
    silo_core::logging::init_tracing(&config.log);
    let summary = silo_core::config::masked_summary(&config, SECRET_KEYS);
    if check_only {
        println!("configuration OK: {summary}");
        return Ok(());
    }
    tracing::info!(file = ?loaded.file, config = %summary, "starting silo-proxy-server {}", env!("CARGO_PKG_VERSION"));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listeners = silo_server::Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        silo_server::run(config, listeners, shutdown).await?;
        Ok(())
    })
}

/// An admin command against a running server (no logging setup: its
/// output is the answer, errors are one line).
fn run_admin(config_file: Option<PathBuf>, command: admin_cli::AdminCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(admin_cli::run(config_file, command))
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn signal_shutdown(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}
