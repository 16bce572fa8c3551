//! One large download and one large upload through a single connection,
//! direct and through the tunnel, with the peak RSS of the server and the
//! agent during the tunnelled ones: memory must stay flat, not grow with
//! the body.

use crate::loadgen;
use crate::procs::{Agent, Mem, Server, reset_peak};
use crate::report::{Row, Target, median};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Peak RSS (KiB) of some processes while a future runs: VmHWM after a
/// reset, cross-checked by sampling VmRSS (in case clear_refs is refused).
async fn with_peaks<T>(pids: [u32; 2], f: impl Future<Output = T>) -> (T, [u64; 2]) {
    let reset = pids.map(reset_peak);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = [0u64; 2];
        while !stop2.load(Ordering::Relaxed) {
            for (p, pid) in peak.iter_mut().zip(pids) {
                *p = (*p).max(Mem::of(pid).map_or(0, |m| m.rss_kib));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    let out = f.await;
    stop.store(true, Ordering::Relaxed);
    let mut peak = sampler.await.unwrap_or_default();
    for i in 0..2 {
        if reset[i] {
            peak[i] = peak[i].max(Mem::of(pids[i]).map_or(0, |m| m.hwm_kib));
        }
    }
    (out, peak)
}

pub async fn run(
    backend: SocketAddr,
    tunnel: SocketAddr,
    server: &Server,
    agent: &Agent,
    bytes: u64,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let pids = [server.proc.pid, agent.proc.pid];
    let mib = bytes >> 20;
    let before = [server.proc.mem()?.rss_kib, agent.proc.mem()?.rss_kib];
    // [download, upload] × [direct, tunnel] MB/s per round.
    let mut rates: [[Vec<f64>; 2]; 2] = Default::default();
    // [download, upload] × [server, agent] peak KiB over all rounds.
    let mut peaks = [[0u64; 2]; 2];
    for round in 0..rounds {
        for (dir, name) in ["download", "upload"].into_iter().enumerate() {
            for through in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let target = if through { tunnel } else { backend };
                let run = async {
                    if dir == 0 {
                        loadgen::download(target, bytes).await
                    } else {
                        loadgen::upload(target, bytes).await
                    }
                };
                let (secs, peak) = with_peaks(pids, run).await;
                let mbps = bytes as f64 / secs? / 1e6;
                rates[dir][usize::from(through)].push(mbps);
                if through {
                    for who in 0..2 {
                        peaks[dir][who] = peaks[dir][who].max(peak[who]);
                    }
                }
                eprintln!(
                    "  round {}/{rounds} {mib} MiB {name:<8} {:<6} {mbps:>8.1} MB/s{}",
                    round + 1,
                    if through { "tunnel" } else { "direct" },
                    if through {
                        format!(
                            " peak RSS server {:.1} MiB agent {:.1} MiB",
                            peak[0] as f64 / 1024.0,
                            peak[1] as f64 / 1024.0
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    let mut rows = Vec::new();
    for (dir, name) in ["download", "upload"].into_iter().enumerate() {
        let workload = format!("{mib} MiB {name} @1 conn");
        rows.push(
            Row::new(&workload, "MB/s", 0).pair(median(&rates[dir][0]), median(&rates[dir][1])),
        );
        for (who, proc) in ["server", "agent"].into_iter().enumerate() {
            rows.push(
                Row::new(
                    &workload,
                    &format!(
                        "peak RSS {proc}, MiB (idle {:.1})",
                        before[who] as f64 / 1024.0
                    ),
                    1,
                )
                .only(peaks[dir][who] as f64 / 1024.0)
                .target(Target::Below(64.0)),
            );
        }
    }
    Ok(rows)
}
