//! The real `silo-proxy-server` and `silo-proxy-agent` binaries as child
//! processes (so their memory is measured apart from the load generator's),
//! their configuration, certificates, and memory readings from /proc.

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use silo_pki::{CaPaths, CertSigner, LocalCaSigner, SubjectPublicKey};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef";

/// A child process killed when dropped, with its stderr kept in a file.
pub struct Proc {
    pub name: &'static str,
    pub pid: u32,
    child: std::process::Child,
    log: PathBuf,
}

/// How to run a child: experiments on runtime size and profiling without
/// touching the benchmark's code.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// `TOKIO_WORKER_THREADS` of the child (tokio's default: one per core).
    pub workers: Option<usize>,
    /// A command prefix, e.g. `valgrind --tool=callgrind` (same pid).
    pub wrapper: Option<String>,
}

/// [`Launch`] of the server and of the agent, set once by `main`.
pub static LAUNCH: std::sync::OnceLock<(Launch, Launch)> = std::sync::OnceLock::new();

impl Proc {
    fn spawn(name: &'static str, config: &Path, dir: &Path) -> anyhow::Result<Self> {
        let bin = sibling_binary(name)?;
        let log = dir.join(format!("{name}.log"));
        let launch = LAUNCH
            .get()
            .map_or_else(Launch::default, |(server, agent)| {
                if name == "silo-proxy-server" {
                    server
                } else {
                    agent
                }
                .clone()
            });
        let mut cmd = match launch.wrapper.as_deref().map(str::split_whitespace) {
            Some(mut words) => {
                let mut cmd = Command::new(words.next().unwrap_or("env"));
                cmd.args(words).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        // No inherited SILO_* / RUST_LOG overrides: the config file says it all.
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path); // for a wrapper
        }
        if let Some(n) = launch.workers {
            cmd.env("TOKIO_WORKER_THREADS", n.to_string());
        }
        cmd.arg("--config").arg(config);
        Self::spawn_command(name, cmd, dir, &log)
    }

    /// Starts `cmd` in `dir` with its stdout and stderr in `log`.
    pub fn spawn_command(
        name: &'static str,
        mut cmd: Command,
        dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Self {
            name,
            pid: child.id(),
            child,
            log: log.to_owned(),
        })
    }

    /// Fails with the end of the child's log when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    pub fn mem(&self) -> anyhow::Result<Mem> {
        Mem::of(self.pid)
    }

    /// CPU time (user + system, all threads) used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 12th and 13th of those, in USER_HZ ticks (100 on Linux).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Proc {
    /// SIGTERM first (a profiler wrapper writes its data on a clean exit),
    /// SIGKILL after ten seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Release binaries live next to the bench binary (`target/release/`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p silo-server -p silo-agent`",
            path.display()
        );
    }
    Ok(path)
}

/// Resident and peak resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Mem {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }
}

/// Resets VmHWM to the current RSS (Linux clear_refs "5"), so a later
/// VmHWM is the peak of one workload rather than of the whole run.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` consecutive free loopback ports below the ephemeral range.
fn free_port_range(n: u16) -> anyhow::Result<(u16, u16)> {
    let seed = (std::process::id() % 1000) as u16 * 17;
    for i in 0..300u16 {
        let start = 20000 + (seed + i * (n + 3)) % 10000;
        if (start..start + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok((start, start + n - 1));
        }
    }
    bail!("no {n} consecutive free ports")
}

/// A running server with a fresh data_dir; mTLS on (its own CA).
pub struct Server {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
}

impl Server {
    /// `agent_ports`: dedicated per-agent ports (off for thousands of
    /// idle agents, which no port range can hold).
    pub fn start(dir: &Path, agent_ports: bool) -> anyhow::Result<Self> {
        let data_dir = dir.join("server");
        std::fs::create_dir_all(&data_dir)?;
        let (api, grpc) = (free_port()?, free_port()?);
        let (start, end) = free_port_range(4)?;
        // JSON is YAML, and serde_json quotes paths correctly.
        let config = serde_json::json!({
            "log": {"level": "warn"},
            "data_dir": data_dir,
            "bind": "127.0.0.1",
            "shutdown_grace_seconds": 1,
            "http": {
                "port": api,
                "admin_api_key": ADMIN_KEY,
                "generate_admin_api_key": false,
                "agent_ports": agent_ports,
                "agent_port_range": {"start": start, "end": end},
            },
            // No shared proxy port: tunnel traffic goes to the agent's port.
            // Long timeouts so a slow 1 GiB transfer is not cut.
            "proxy": {"port": 0, "request_timeout_seconds": 600, "idle_timeout_seconds": 600},
            "grpc": {"port": grpc, "tls": {"enabled": true}},
        });
        let file = dir.join("server.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
        let mut proc = Proc::spawn("silo-proxy-server", &file, dir)?;
        let grpc = SocketAddr::from(([127, 0, 0, 1], grpc));
        let paths = CaPaths::under_data_dir(&data_dir);
        // Up when the gRPC port answers and the CA and server certificate
        // it generated are on disk (ports are bound before the PKI starts).
        wait_for(
            &mut [&mut proc],
            Duration::from_secs(60),
            "server up",
            || {
                ([&paths.ca_cert, &paths.ca_key, &paths.server_cert]
                    .iter()
                    .all(|p| p.is_file())
                    && TcpStream::connect(grpc).is_ok())
                .then_some(())
            },
        )?;
        Ok(Self {
            proc,
            grpc,
            data_dir,
        })
    }

    /// The server's CA, read from its data_dir (no file is written).
    pub fn ca(&self) -> anyhow::Result<Ca> {
        let paths = CaPaths::under_data_dir(&self.data_dir);
        let cert_pem = std::fs::read_to_string(&paths.ca_cert)?;
        let key_pem = std::fs::read_to_string(&paths.ca_key)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("CA certificate: {e:?}"))?;
        let key = silo_pki::load_key_pair_pem(&key_pem, "CA key")?;
        let signer = LocalCaSigner::new(der.to_vec(), key)?;
        Ok(Ca {
            signer,
            ca_pem: cert_pem,
        })
    }
}

/// Issues agent certificates the way provisioning would.
pub struct Ca {
    signer: LocalCaSigner,
    pub ca_pem: String,
}

/// An agent certificate and its key, PEM.
pub struct AgentCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn issue(&self, agent_id: &str) -> anyhow::Result<AgentCert> {
        let key = silo_pki::generate_key(silo_pki::KeyType::EcdsaP256)?;
        let public = SubjectPublicKey::from_key_pair(&key)?;
        let issued = self.signer.sign_agent(
            agent_id,
            &public,
            Duration::from_secs(86400),
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(AgentCert {
            cert_pem: issued.pem,
            key_pem: key.serialize_pem(),
        })
    }
}

/// The real agent binary, connected, with its dedicated port.
pub struct Agent {
    pub proc: Proc,
    pub port: u16,
}

impl Agent {
    pub fn start(dir: &Path, server: &Server, backend: SocketAddr) -> anyhow::Result<Self> {
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir)?;
        let id = "bench-agent";
        let cert = server.ca()?.issue(id)?;
        let (cert_file, key_file, ca_file) = (
            agent_dir.join("agent-cert.pem"),
            agent_dir.join("agent-key.pem"),
            agent_dir.join("ca-cert.pem"),
        );
        silo_pki::write_public_file(&cert_file, cert.cert_pem.as_bytes())?;
        silo_pki::write_private_file(&key_file, cert.key_pem.as_bytes())?;
        silo_pki::write_public_file(&ca_file, server.ca()?.ca_pem.as_bytes())?;
        let health = free_port()?;
        let config = serde_json::json!({
            "log": {"level": "warn"},
            "http": {"port": health, "bind": "127.0.0.1"},
            "grpc": {
                "server_address": format!("localhost:{}", server.grpc.port()),
                "agent_id": id,
                "tls": {"enabled": true, "cert_file": cert_file, "key_file": key_file, "ca_file": ca_file},
            },
            "local": {"service_url": format!("http://{backend}")},
            "shutdown_grace_seconds": 1,
        });
        let file = dir.join("agent.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
        let mut proc = Proc::spawn("silo-proxy-agent", &file, dir)?;
        let what = format!("agent connected (log: {})", dir.display());
        let port = wait_for(&mut [&mut proc], Duration::from_secs(30), &what, || {
            health_port(health)
        })?;
        Ok(Self { proc, port })
    }
}

/// Polls `check` until it yields a value; fails as soon as one of `procs`
/// has exited (with the end of its log), or after `within`.
pub fn wait_for<T>(
    procs: &mut [&mut Proc],
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's assigned port from its `GET /health`, once connected.
fn health_port(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let port = v["port"].as_u64()?;
    (v["connected"] == true && port != 0).then_some(port as u16)
}
