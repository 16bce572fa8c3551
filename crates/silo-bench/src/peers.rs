//! Other tunnels on the same backend, for comparison (testing.md: "Peers
//! (rathole, bore from crates.io) may be run side by side on the same
//! backend when installed").
//!
//! Each peer found (in `--peers-dir` or on `PATH`) is started on loopback
//! with its server and client as child processes; the small workloads then
//! go through it too, interleaved with direct and silo-proxy. They forward
//! TCP, not HTTP: no request parsing, no per-request framing.
//! rathole's TLS transport authenticates the server only (no client
//! certificate), so it does less than silo-proxy's mutual TLS.

use crate::procs::{Proc, free_port, wait_for};
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running peer tunnel: plain HTTP on `addr` reaches the backend.
pub struct Peer {
    pub label: &'static str,
    pub addr: SocketAddr,
    pub procs: Vec<Proc>,
}

impl Peer {
    /// CPU seconds of the peer's server and client together.
    pub fn cpu_secs(&self) -> f64 {
        self.procs.iter().map(Proc::cpu_secs).sum()
    }
}

/// Starts every peer whose binary is installed; a peer that fails to start
/// is reported and left out.
pub fn start_all(dir: &Path, bin_dir: Option<&Path>, backend: SocketAddr) -> Vec<Peer> {
    let mut peers = Vec::new();
    type Starter = fn(&Path, &Path, SocketAddr) -> anyhow::Result<Peer>;
    let kinds: [(&str, &str, Starter); 3] = [
        ("bore", "bore", start_bore),
        ("rathole", "rathole", start_rathole_tcp),
        ("rathole", "rathole-tls", start_rathole_tls),
    ];
    for (bin, sub, start) in kinds {
        let Some(path) = find_binary(bin, bin_dir) else {
            continue;
        };
        let work = dir.join(sub);
        let started = std::fs::create_dir_all(&work)
            .map_err(anyhow::Error::from)
            .and_then(|()| start(&path, &work, backend));
        match started {
            Ok(peer) => {
                eprintln!("peer {} on {}", peer.label, peer.addr);
                peers.push(peer);
            }
            Err(e) => eprintln!("peer {sub} left out: {e:#}"),
        }
    }
    peers
}

fn find_binary(name: &str, bin_dir: Option<&Path>) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = match bin_dir {
        Some(d) => vec![d.to_owned()],
        None => std::env::split_paths(&std::env::var_os("PATH")?).collect(),
    };
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn start_bore(bin: &Path, dir: &Path, backend: SocketAddr) -> anyhow::Result<Peer> {
    // bore's control port is fixed (7835).
    if TcpStream::connect(("127.0.0.1", 7835)).is_ok() {
        bail!("port 7835 (bore's control port) is in use");
    }
    let port = free_port()?;
    let mut server = Command::new(bin);
    server.args(["server", "--bind-addr", "127.0.0.1"]);
    server.args([
        "--min-port",
        &port.to_string(),
        "--max-port",
        &port.to_string(),
    ]);
    let mut server = Proc::spawn_command("bore", server, dir, &dir.join("server.log"))?;
    wait_listening(&mut server, SocketAddr::from(([127, 0, 0, 1], 7835)))?;
    let mut client = Command::new(bin);
    client.args([
        "local",
        &backend.port().to_string(),
        "--local-host",
        "127.0.0.1",
    ]);
    client.args(["--to", "127.0.0.1", "--port", &port.to_string()]);
    let client = Proc::spawn_command("bore", client, dir, &dir.join("client.log"))?;
    ready(Peer {
        label: "bore",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        procs: vec![server, client],
    })
}

fn start_rathole_tcp(bin: &Path, dir: &Path, backend: SocketAddr) -> anyhow::Result<Peer> {
    start_rathole(bin, dir, backend, false, "rathole")
}

fn start_rathole_tls(bin: &Path, dir: &Path, backend: SocketAddr) -> anyhow::Result<Peer> {
    // rathole reads a PKCS#12 identity (native-tls); openssl makes one.
    let openssl = |args: &str| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .context("running openssl (needed for rathole's TLS identity)")?;
        if !out.status.success() {
            bail!("openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    openssl(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
         -out cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost",
    )?;
    openssl("pkcs12 -export -out identity.p12 -inkey key.pem -in cert.pem -passout pass:bench")?;
    start_rathole(bin, dir, backend, true, "rathole + TLS")
}

fn start_rathole(
    bin: &Path,
    dir: &Path,
    backend: SocketAddr,
    tls: bool,
    label: &'static str,
) -> anyhow::Result<Peer> {
    let (control, port) = (free_port()?, free_port()?);
    let (server_tls, client_tls) = if tls {
        (
            "type = \"tls\"\n[server.transport.tls]\npkcs12 = \"identity.p12\"\npkcs12_password = \"bench\"\n",
            "type = \"tls\"\n[client.transport.tls]\ntrusted_root = \"cert.pem\"\nhostname = \"localhost\"\n",
        )
    } else {
        ("type = \"tcp\"\n", "type = \"tcp\"\n")
    };
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.transport]\n{server_tls}\
             [server.transport.tcp]\nnodelay = true\n\
             [server.services.bench]\ntoken = \"bench-token\"\nbind_addr = \"127.0.0.1:{port}\"\nnodelay = true\n"
        ),
    )?;
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "[client]\nremote_addr = \"localhost:{control}\"\n[client.transport]\n{client_tls}\
             [client.transport.tcp]\nnodelay = true\n\
             [client.services.bench]\ntoken = \"bench-token\"\nlocal_addr = \"{backend}\"\nnodelay = true\n"
        ),
    )?;
    let mut server = Command::new(bin);
    server.args(["--server", "server.toml"]);
    let mut server = Proc::spawn_command("rathole", server, dir, &dir.join("server.log"))?;
    wait_listening(&mut server, SocketAddr::from(([127, 0, 0, 1], control)))?;
    let mut client = Command::new(bin);
    client.args(["--client", "client.toml"]);
    let client = Proc::spawn_command("rathole", client, dir, &dir.join("client.log"))?;
    ready(Peer {
        label,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        procs: vec![server, client],
    })
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(server: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let what = format!("a listener on {addr}");
    wait_for(&mut [server], Duration::from_secs(10), &what, || {
        TcpStream::connect(addr).is_ok().then_some(())
    })
}

/// Waits until a request through the peer reaches the backend.
fn ready(mut peer: Peer) -> anyhow::Result<Peer> {
    let what = format!("an answer through {}", peer.label);
    let mut procs: Vec<&mut Proc> = peer.procs.iter_mut().collect();
    wait_for(&mut procs, Duration::from_secs(10), &what, || {
        get_small(peer.addr).ok()
    })?;
    Ok(peer)
}

fn get_small(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if &head != b"HTTP/1.1 200" {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&head));
    }
    Ok(())
}
