//! `silo-proxy-agent`: parse the command line, load the configuration, set
//! up logging and signals, and hand over to the library.

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
use silo_agent::config::AgentConfig;
use silo_core::config::{ConfigSource, load};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "silo-proxy-agent",
    version,
    about = "silo-proxy agent: exposes a local HTTP service through a silo-proxy server"
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
    /// Run the agent (the default).
    Run,
    /// Obtain this device's certificate with a provision key.
    Provision(Box<silo_agent::provision::ProvisionArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_agent(cli.config, cli.check_config),
        Command::Provision(args) => provision(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo-proxy-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(config_file: Option<PathBuf>, check_only: bool) -> anyhow::Result<()> {
    let loaded = load::<AgentConfig>(&ConfigSource::for_process(config_file))?;
    let config = loaded.config;
    config.validate()?;
    silo_core::logging::init_tracing(&config.log);
    let summary = silo_core::config::masked_summary(&config, &[]);
    if check_only {
        println!("configuration OK: {summary}");
        return Ok(());
    }
    tracing::info!(file = ?loaded.file, config = %summary, "starting silo-proxy-agent {}", env!("CARGO_PKG_VERSION"));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let health = match config.http.port {
            0 => None,
            port => {
                let ip = config.http.bind.parse().context("http.bind")?;
                let addr = SocketAddr::new(ip, port);
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr} (http.port)"))?,
                )
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        silo_agent::run(config, health, Default::default(), shutdown).await?;
        Ok(())
    })
}

/// `provision`: prints the configuration (or where it was written) on
/// stdout and a summary on stderr.
fn provision(args: silo_agent::provision::ProvisionArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let wrote_config = args.write_config.clone();
    let done = runtime.block_on(silo_agent::provision::run(args))?;
    eprintln!(
        "provisioned agent {}: certificate valid until {}
  key:  {}
  cert: {}
  ca:   {}",
        done.agent_id,
        done.not_after,
        done.files.key_file.display(),
        done.files.cert_file.display(),
        done.files.ca_file.display(),
    );
    match wrote_config {
        Some(path) => eprintln!(
            "configuration written to {0}; start the agent with: silo-proxy-agent --config {0}",
            path.display()
        ),
        None => print!("{}", done.config_yaml),
    }
    Ok(())
}

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
