//! `silo-bench`: the same HTTP load sent directly to a local backend and
//! through a silo-proxy tunnel (the real server and agent binaries, mTLS
//! on), interleaved over several rounds, reported as medians and ratios.
//!
//! Build the binaries it starts first:
//! `cargo build --release -p silo-server -p silo-agent`, then
//! `cargo run --release -p silo-bench -- [--quick] [--out FILE]`.

mod backend;
mod big;
mod idle;
mod loadgen;
mod peers;
mod procs;
mod provision;
mod report;
mod small;

use clap::{Parser, ValueEnum};
use report::{Row, Target};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "silo-bench",
    about = "Benchmarks silo-proxy against direct connections on loopback"
)]
struct Cli {
    /// Short run (under a minute): 1 s per run, 2 rounds, 256 MiB large
    /// transfers, 1,000 idle agents.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per run of the small workloads [default: 5; quick: 1].
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Rounds of each direct/tunnel pair; medians are reported [default: 5; quick: 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// Workloads to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Size of the large download and upload in MiB [default: 1024; quick: 256].
    #[arg(long)]
    big_mib: Option<u64>,
    /// Idle-agent counts, connected cumulatively [default: 1000,10000; quick: 1000].
    #[arg(long, value_delimiter = ',')]
    agents: Vec<usize>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads of the server's runtime (TOKIO_WORKER_THREADS) [default: one per core].
    #[arg(long)]
    server_workers: Option<usize>,
    /// Worker threads of the agent's runtime [default: one per core].
    #[arg(long)]
    agent_workers: Option<usize>,
    /// Command prefix for the server, for profiling (e.g. "valgrind --tool=callgrind").
    #[arg(long)]
    server_wrapper: Option<String>,
    /// Command prefix for the agent.
    #[arg(long)]
    agent_wrapper: Option<String>,
    /// Where to look for peer tunnels (`bore`, `rathole`) [default: PATH;
    /// with --quick, peers run only when this is given].
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Do not run peer tunnels even when installed.
    #[arg(long)]
    no_peers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
enum Workload {
    /// GET 100 B at 64 connections.
    Small64,
    /// GET 100 B at 1 connection.
    Small1,
    /// 10 MiB downloads at 4 connections.
    Download,
    /// 4 KiB POST echo at 16 connections.
    Echo,
    /// One large download and upload, with peak RSS.
    Big,
    /// Idle mTLS agents: server RSS per agent.
    Idle,
    /// CSR signings per second.
    Provision,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let selected = |w: Workload| cli.only.is_empty() || cli.only.contains(&w);
    let duration =
        Duration::from_secs_f64(
            cli.duration_secs
                .unwrap_or(if cli.quick { 1.0 } else { 5.0 }),
        );
    let rounds = cli.rounds.unwrap_or(if cli.quick { 2 } else { 5 }).max(1);
    let big_bytes = cli.big_mib.unwrap_or(if cli.quick { 256 } else { 1024 }) << 20;
    let agents = match (&cli.agents[..], cli.quick) {
        ([], true) => vec![1000],
        ([], false) => vec![1000, 10_000],
        (given, _) => given.to_vec(),
    };
    // 10,000 agents need 10,000 sockets here and in the server (a child
    // inherits the limit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("RLIMIT_NOFILE: {n}"),
        Err(e) => eprintln!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    let launch = |workers, wrapper: &Option<String>| procs::Launch {
        workers,
        wrapper: wrapper.clone(),
    };
    let _ = procs::LAUNCH.set((
        launch(cli.server_workers, &cli.server_wrapper),
        launch(cli.agent_workers, &cli.agent_wrapper),
    ));
    let dir = tempfile::Builder::new().prefix("silo-bench-").tempdir()?;
    let machine = report::machine();
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    let mut peer_table = None;

    if small::SMALL.iter().any(|s| selected(s.workload)) || selected(Workload::Big) {
        let backend = backend::spawn().await?;
        eprintln!("backend on {backend}; starting server and agent (mTLS)");
        let (server, agent) = tokio::task::block_in_place(|| {
            let server = procs::Server::start(&dir.path().join("tunnel"), true)?;
            let agent = procs::Agent::start(&dir.path().join("tunnel"), &server, backend)?;
            anyhow::Ok((server, agent))
        })?;
        let tunnel = SocketAddr::from(([127, 0, 0, 1], agent.port));
        eprintln!("agent connected; tunnel on {tunnel}");
        let smalls: Vec<&small::Small> = small::SMALL
            .iter()
            .filter(|s| selected(s.workload))
            .collect();
        // Peers add a path per workload: --quick stays under a minute
        // without them unless asked.
        let skip_peers = cli.no_peers || (cli.quick && cli.peers_dir.is_none());
        let peers = if skip_peers || smalls.is_empty() {
            Vec::new()
        } else {
            tokio::task::block_in_place(|| {
                peers::start_all(&dir.path().join("peers"), cli.peers_dir.as_deref(), backend)
            })
        };
        let paths = small::Paths {
            backend,
            tunnel,
            server: &server,
            agent: &agent,
            peers: &peers,
        };
        let (small_rows, table) = small::run(&smalls, paths, rounds, duration).await?;
        rows.extend(small_rows);
        peer_table = table;
        if selected(Workload::Big) {
            let big_rounds = rounds.min(3);
            rows.extend(big::run(backend, tunnel, &server, &agent, big_bytes, big_rounds).await?);
        }
    }

    if selected(Workload::Idle) {
        eprintln!("idle agents: fresh server with http.agent_ports false");
        let (baseline, steps) = idle::run(&dir.path().join("idle"), &agents).await?;
        for s in steps {
            let name = format!("{} idle mTLS agents", thousands(s.agents));
            let per_agent = (s.rss_kib.saturating_sub(baseline)) as f64 / s.agents as f64;
            let mut row = Row::new(&name, "server RSS per agent, KiB", 1).only(per_agent);
            if s.agents >= 10_000 {
                row = row.target(Target::Below(64.0));
            }
            rows.push(row);
            rows.push(Row::new(&name, "server RSS total, MiB", 1).only(s.rss_kib as f64 / 1024.0));
            rows.push(Row::new(&name, "time to connect all, s", 1).only(s.connect_secs));
        }
    }

    if selected(Workload::Provision) {
        eprintln!("provisioning: CSR signings");
        let per_kind = Duration::from_secs_f64(if cli.quick { 1.0 } else { 3.0 });
        let rates = tokio::task::spawn_blocking(move || provision::run(per_kind, 3)).await??;
        rows.push(Row::new("CSR signing (1 thread)", "P-256 signings/s", 0).only(rates.p256));
        rows.push(Row::new("CSR signing (1 thread)", "RSA-2048 signings/s", 0).only(rates.rsa2048));
    }

    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let text = format!(
        "Command: `cargo run --release -p silo-bench --{}{command}`  \nDate: {}  \nMachine: {}  \n\
         Settings: {rounds} rounds × {:.1} s per run (medians), large transfers {} MiB, mTLS on, \
         built-in HTTP/1.1 load generator; took {:.0} s.\n\n{}\n\
         Rows with a single figure (memory, connect time, signings) show it under *tunnel*; \
         ratio = tunnel / direct.\n",
        if command.is_empty() { "" } else { " " },
        report::now_utc(),
        machine,
        duration.as_secs_f64(),
        big_bytes >> 20,
        started.elapsed().as_secs_f64(),
        report::table(&rows)
    );
    let text = match &peer_table {
        Some(t) => format!(
            "{text}\nOther tunnels on the same backend and load (medians; ratio to direct in \
             brackets; CPU = both processes of the tunnel):\n\n{t}"
        ),
        None => text,
    };
    println!("{text}");
    if let Some(out) = &cli.out {
        std::fs::write(out, &text)?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
