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
mod procs;
mod provision;
mod report;

use clap::{Parser, ValueEnum};
use loadgen::{Kind, Load};
use report::{Row, Target, median};
use std::collections::HashMap;
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

struct Small {
    workload: Workload,
    name: &'static str,
    conns: usize,
    kind: Kind,
}

const SMALL: [Small; 4] = [
    Small {
        workload: Workload::Small64,
        name: "GET 100 B @64 conns",
        conns: 64,
        kind: Kind::Get("/small"),
    },
    Small {
        workload: Workload::Small1,
        name: "GET 100 B @1 conn",
        conns: 1,
        kind: Kind::Get("/small"),
    },
    Small {
        workload: Workload::Download,
        name: "GET 10 MiB @4 conns",
        conns: 4,
        kind: Kind::Get("/bytes?n=10485760"),
    },
    Small {
        workload: Workload::Echo,
        name: "POST 4 KiB echo @16 conns",
        conns: 16,
        kind: Kind::Post("/echo", 4096),
    },
];

/// Per-run figures of one small workload on one path.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    mbps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU µs of the server and of the agent per tunnelled request.
    server_us: Vec<f64>,
    agent_us: Vec<f64>,
    errors: u64,
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

    if SMALL.iter().any(|s| selected(s.workload)) || selected(Workload::Big) {
        let backend = backend::spawn().await?;
        eprintln!("backend on {backend}; starting server and agent (mTLS)");
        let (server, agent) = tokio::task::block_in_place(|| {
            let server = procs::Server::start(&dir.path().join("tunnel"), true)?;
            let agent = procs::Agent::start(&dir.path().join("tunnel"), &server, backend)?;
            anyhow::Ok((server, agent))
        })?;
        let tunnel = SocketAddr::from(([127, 0, 0, 1], agent.port));
        eprintln!("agent connected; tunnel on {tunnel}");
        let smalls: Vec<&Small> = SMALL.iter().filter(|s| selected(s.workload)).collect();
        let warmup = Duration::from_secs_f64((duration.as_secs_f64() / 4.0).clamp(0.25, 1.0));
        let mut samples: HashMap<(&str, bool), Samples> = HashMap::new();
        for round in 0..rounds {
            for s in &smalls {
                // Alternate which path goes first so drift hits both alike.
                for through in if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                } {
                    let target = if through { tunnel } else { backend };
                    let cpu = || (server.proc.cpu_secs(), agent.proc.cpu_secs());
                    let before = cpu();
                    let o = loadgen::run(Load {
                        target,
                        conns: s.conns,
                        kind: s.kind,
                        warmup,
                        duration,
                    })
                    .await?;
                    let after = cpu();
                    let e = samples.entry((s.name, through)).or_default();
                    if through {
                        let per = |a: f64, b: f64| (b - a) * 1e6 / o.completed.max(1) as f64;
                        e.server_us.push(per(before.0, after.0));
                        e.agent_us.push(per(before.1, after.1));
                    }
                    e.rps.push(o.req_per_sec());
                    e.mbps.push(o.mb_per_sec());
                    e.p50.push(o.percentile_ms(50.0));
                    e.p99.push(o.percentile_ms(99.0));
                    e.errors += o.errors;
                    eprintln!(
                        "  round {}/{rounds} {:<26} {:<6} {:>9.0} req/s {:>8.1} MB/s p50 {:.2} ms p99 {:.2} ms{}",
                        round + 1,
                        s.name,
                        if through { "tunnel" } else { "direct" },
                        o.req_per_sec(),
                        o.mb_per_sec(),
                        o.percentile_ms(50.0),
                        o.percentile_ms(99.0),
                        if o.errors > 0 {
                            format!(" ({} errors)", o.errors)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        for s in &smalls {
            let (d, t) = (&samples[&(s.name, false)], &samples[&(s.name, true)]);
            let pair = |metric: &str, dec: usize, f: fn(&Samples) -> &Vec<f64>| {
                Row::new(s.name, metric, dec).pair(median(f(d)), median(f(t)))
            };
            match s.workload {
                Workload::Small64 => {
                    rows.push(pair("req/s", 0, |x| &x.rps).target(Target::RatioAtLeast(0.55)));
                    rows.push(pair("p50 ms", 2, |x| &x.p50));
                    rows.push(pair("p99 ms", 2, |x| &x.p99).target(Target::RatioAtMost(2.0)));
                }
                Workload::Small1 => {
                    rows.push(pair("req/s", 0, |x| &x.rps).target(Target::RatioAtLeast(0.40)));
                    rows.push(pair("p50 ms", 3, |x| &x.p50));
                    rows.push(pair("p99 ms", 3, |x| &x.p99));
                }
                Workload::Download => {
                    rows.push(pair("MB/s", 0, |x| &x.mbps).target(Target::RatioAtLeast(0.50)));
                }
                _ => {
                    rows.push(pair("req/s", 0, |x| &x.rps).target(Target::RatioAtLeast(0.50)));
                    rows.push(pair("p99 ms", 2, |x| &x.p99).target(Target::RatioAtMost(2.0)));
                }
            }
            // Noise-robust: what the tunnel costs per request, whatever else
            // the machine is doing.
            // Bulk transfers per MB (10 MiB = 10.49 MB per request).
            let (unit, per) = match s.workload {
                Workload::Download => ("MB", 10.485_76),
                _ => ("request", 1.0),
            };
            for (who, v) in [("server", &t.server_us), ("agent", &t.agent_us)] {
                let metric = format!("{who} CPU µs/{unit}");
                rows.push(Row::new(s.name, &metric, 0).only(median(v) / per));
            }
            if d.errors + t.errors > 0 {
                eprintln!(
                    "  warning: {}: {} direct / {} tunnel errors",
                    s.name, d.errors, t.errors
                );
            }
        }
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
