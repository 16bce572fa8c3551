//! The per-agent port pool: sticky assignment from `http.agent_port_range`.
//!
//! An agent gets back the port it had before (after a reconnect or, once
//! the store remembers assignments, a server restart) as long as that port is
//! free; new agents prefer ports nobody remembers, so a returning agent
//! rarely finds its port taken.

use crate::config::PortRange;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    in_use: HashSet<u16>,
    /// Last port of each agent, by normalised agent id.
    sticky: HashMap<String, u16>,
}

/// A bound listener for an agent.
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    pub listener: tokio::net::TcpListener,
}

#[derive(Debug, thiserror::Error)]
#[error("no free port in http.agent_port_range {start}-{end}")]
pub struct PortsExhausted {
    pub start: u16,
    pub end: u16,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            in_use: HashSet::new(),
            sticky: HashMap::new(),
        }
    }

    /// Remembered assignments, e.g. loaded from the store at start.
    pub fn seed_sticky(&mut self, entries: impl IntoIterator<Item = (String, u16)>) {
        for (key, port) in entries {
            if (self.range.start..=self.range.end).contains(&port) {
                self.sticky.insert(key, port);
            }
        }
    }

    pub fn sticky_port(&self, key: &str) -> Option<u16> {
        self.sticky.get(key).copied()
    }

    /// Forgets an agent's remembered port.
    pub fn forget(&mut self, key: &str) {
        self.sticky.remove(key);
    }

    /// Ports to try for `key`, best first.
    fn candidates(&self, key: &str) -> Vec<u16> {
        let remembered: HashSet<u16> = self
            .sticky
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(_, p)| *p)
            .collect();
        let free = (self.range.start..=self.range.end).filter(|p| !self.in_use.contains(p));
        let (unclaimed, others): (Vec<u16>, Vec<u16>) = free.partition(|p| !remembered.contains(p));
        let own = self.sticky_port(key).filter(|p| !self.in_use.contains(p));
        own.into_iter()
            .chain(unclaimed.into_iter().filter(|p| Some(*p) != own))
            .chain(others)
            .collect()
    }

    /// Binds the best free port for `key`. Ports another process holds are
    /// skipped; only when none binds is the pool exhausted.
    pub fn lease(&mut self, key: &str, ip: IpAddr) -> Result<PortLease, PortsExhausted> {
        for port in self.candidates(key) {
            let Ok(listener) = bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            self.in_use.insert(port);
            self.sticky.insert(key.to_owned(), port);
            return Ok(PortLease { port, listener });
        }
        Err(PortsExhausted {
            start: self.range.start,
            end: self.range.end,
        })
    }

    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // std sets SO_REUSEADDR on Unix, so a port released a moment ago (its
    // old connections in TIME_WAIT) binds again at once.
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A range of `n` ports that are free right now (found by binding port
    /// 0 and probing upwards), so tests don't collide with other processes.
    fn free_range(n: u16) -> PortRange {
        'outer: for base in (20000..30000).step_by(97) {
            for p in base..base + n {
                if std::net::TcpListener::bind((LO, p)).is_err() {
                    continue 'outer;
                }
            }
            return PortRange {
                start: base,
                end: base + n - 1,
            };
        }
        panic!("no free port range");
    }

    #[tokio::test]
    async fn sticky_port_comes_back_and_exhaustion_is_reported() {
        let range = free_range(2);
        let mut pool = PortPool::new(range);
        let a = pool.lease("a", LO).unwrap();
        let b = pool.lease("b", LO).unwrap();
        assert_ne!(a.port, b.port);
        assert!(pool.lease("c", LO).is_err());
        let a_port = a.port;
        drop(a);
        pool.release(a_port);
        // "c" may take the freed port: nobody else is connected there now.
        let c = pool.lease("c", LO).unwrap();
        assert_eq!(c.port, a_port);
        pool.release(c.port);
        drop(c);
        pool.release(b.port);
        let b_port = b.port;
        drop(b);
        assert_eq!(pool.lease("b", LO).unwrap().port, b_port);
    }

    #[tokio::test]
    async fn new_agents_avoid_ports_others_remember() {
        let range = free_range(3);
        let mut pool = PortPool::new(range);
        pool.seed_sticky([("old".to_string(), range.start)]);
        let lease = pool.lease("new", LO).unwrap();
        assert_ne!(lease.port, range.start);
    }

    #[tokio::test]
    async fn ports_held_by_other_processes_are_skipped() {
        let range = free_range(2);
        let _squatter = std::net::TcpListener::bind((LO, range.start)).unwrap();
        let mut pool = PortPool::new(range);
        assert_eq!(pool.lease("a", LO).unwrap().port, range.end);
        assert!(pool.lease("b", LO).is_err());
    }
}
