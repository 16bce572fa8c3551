//! The short-request workloads (100 B at 64 and 1 connections, 10 MiB
//! downloads, 4 KiB echo): every path (direct, silo-proxy, each peer)
//! takes turns within a round, for several rounds; medians are reported.

use crate::Workload;
use crate::loadgen::{self, Kind, Load};
use crate::peers::Peer;
use crate::procs::{Agent, Server};
use crate::report::{self, Row, Target, median};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Small {
    pub workload: Workload,
    pub name: &'static str,
    conns: usize,
    kind: Kind,
}

pub const SMALL: [Small; 4] = [
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
    /// CPU µs of the server and of the agent per tunnelled request (for a
    /// peer: both its processes in `server_us`, 0 in `agent_us`).
    server_us: Vec<f64>,
    agent_us: Vec<f64>,
    errors: u64,
}

/// Where the load goes: the backend itself, the silo-proxy tunnel (whose
/// processes' CPU time is read), and the peers.
pub struct Paths<'a> {
    pub backend: SocketAddr,
    pub tunnel: SocketAddr,
    pub server: &'a Server,
    pub agent: &'a Agent,
    pub peers: &'a [Peer],
}

/// Runs `smalls` on every path; returns the main table's rows and, with
/// peers, the comparison table.
pub async fn run(
    smalls: &[&Small],
    paths: Paths<'_>,
    rounds: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Row>, Option<String>)> {
    let Paths {
        backend,
        tunnel,
        server,
        agent,
        peers,
    } = paths;
    let mut rows = Vec::new();
    let mut peer_table = None;
    // Path 0 is direct, 1 silo-proxy, then the peers.
    let mut targets = vec![backend, tunnel];
    targets.extend(peers.iter().map(|p| p.addr));
    let label = |path: usize| match path {
        0 => "direct",
        1 => "tunnel",
        n => peers[n - 2].label,
    };
    let cpu = |path: usize| match path {
        0 => (0.0, 0.0),
        1 => (server.proc.cpu_secs(), agent.proc.cpu_secs()),
        n => (peers[n - 2].cpu_secs(), 0.0),
    };
    let warmup = Duration::from_secs_f64((duration.as_secs_f64() / 4.0).clamp(0.25, 1.0));
    let mut samples: HashMap<(&str, usize), Samples> = HashMap::new();
    for round in 0..rounds {
        for s in smalls {
            // Alternate the order of the paths so drift hits all alike.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for path in order {
                let before = cpu(path);
                let o = loadgen::run(Load {
                    target: targets[path],
                    conns: s.conns,
                    kind: s.kind,
                    warmup,
                    duration,
                })
                .await?;
                let after = cpu(path);
                let e = samples.entry((s.name, path)).or_default();
                if path > 0 {
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
                    "  round {}/{rounds} {:<26} {:<13} {:>9.0} req/s {:>8.1} MB/s p50 {:.2} ms p99 {:.2} ms{}",
                    round + 1,
                    s.name,
                    label(path),
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
    if !peers.is_empty() {
        let mut labels = vec!["silo-proxy (mTLS)"];
        labels.extend(peers.iter().map(|p| p.label));
        let mut compare = Vec::new();
        for s in smalls {
            let of = |path: usize| &samples[&(s.name, path)];
            let all = |f: &dyn Fn(&Samples) -> f64| -> Vec<f64> {
                (0..targets.len()).map(|p| f(of(p))).collect()
            };
            let (metric, throughput): (&str, fn(&Samples) -> &Vec<f64>) = match s.workload {
                Workload::Download => ("MB/s", |x| &x.mbps),
                _ => ("req/s", |x| &x.rps),
            };
            compare.push(report::Compare::new(
                s.name,
                metric,
                0,
                all(&|x| median(throughput(x))),
            ));
            compare.push(report::Compare::new(
                s.name,
                "p99 ms",
                2,
                all(&|x| median(&x.p99)),
            ));
            let per_unit = if s.workload == Workload::Download {
                10.485_76
            } else {
                1.0
            };
            let unit = if s.workload == Workload::Download {
                "MB"
            } else {
                "request"
            };
            let mut cpu_row = all(&|x| (median(&x.server_us) + median(&x.agent_us)) / per_unit);
            cpu_row[0] = f64::NAN;
            compare.push(
                report::Compare::new(s.name, &format!("tunnel CPU µs/{unit}"), 0, cpu_row)
                    .without_ratio(),
            );
        }
        peer_table = Some(report::compare_table(&labels, &compare));
    }
    for s in smalls {
        let (d, t) = (&samples[&(s.name, 0)], &samples[&(s.name, 1)]);
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
    Ok((rows, peer_table))
}
