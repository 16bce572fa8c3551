//! End to end with the built binaries, run as processes the way a user
//! runs them: configuration from the environment and files, traffic
//! through the agent's port and the proxy listener, large bodies in bounded
//! memory, an agent killed mid-request, restarts, and the command line.
//!
//! `silo-proxy-server` comes from Cargo (`CARGO_BIN_EXE_*`). Cargo only
//! builds the binaries of the package under test, so the agent binary is
//! built here with `cargo build -p silo-agent --bin silo-proxy-agent` (a
//! no-op when it is up to date) into the same target directory.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use silo_test_support::backend::is_pattern;
use silo_test_support::client::{self, get, get_with, pattern_sum, pattern_upload};
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{Backend, eventually, free_port_range};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;
/// Peak resident memory allowed to the server and the agent while 200 MiB
/// stream through each way.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn server_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_silo-proxy-server"))
}

/// The agent binary next to the server's, built (or found up to date) once
/// per test run.
fn agent_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = server_bin().with_file_name("silo-proxy-agent");
        let profile_dir = server_bin()
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .expect("target profile directory");
        let profile = if profile_dir == "debug" {
            "dev"
        } else {
            profile_dir
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let started = std::time::Instant::now();
        let out = Command::new(cargo)
            .args(["build", "-p", "silo-agent", "--bin", "silo-proxy-agent"])
            .args(["--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build for the agent binary");
        assert!(
            out.status.success(),
            "building silo-proxy-agent failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "{} missing after the build", bin.display());
        eprintln!("agent binary ready in {:?}", started.elapsed());
        bin
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when dropped; its output goes to a log
/// file shown when the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, dir: &Path, env: &[(&str, String)]) -> Self {
        let log = dir.join(format!("{name}-{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self { name, child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status within `within`.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.pid());
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still running {within:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} log (last lines) ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A server process on free loopback ports with a temp `data_dir`.
struct Server {
    proc: Proc,
    api: SocketAddr,
    proxy: SocketAddr,
    grpc: SocketAddr,
    env: Vec<(&'static str, String)>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (api, proxy, grpc) = (free_port(), free_port(), free_port());
        let range = free_port_range(4);
        let env = vec![
            ("SILO_BIND", "127.0.0.1".to_owned()),
            (
                "SILO_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("SILO_HTTP_PORT", api.to_string()),
            ("SILO_PROXY_PORT", proxy.to_string()),
            ("SILO_GRPC_PORT", grpc.to_string()),
            ("HTTP_ADMIN_API_KEY", ADMIN_KEY.to_owned()),
            ("HTTP_AGENT_PORT_RANGE_START", range.start.to_string()),
            ("HTTP_AGENT_PORT_RANGE_END", range.end.to_string()),
            ("SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
            // The tunnel in the clear: certificates are the PKI tests' job.
            ("SILO_GRPC_TLS_ENABLED", "false".to_owned()),
        ];
        let proc = Proc::spawn("server", server_bin(), dir.path(), &env);
        Self {
            proc,
            api: at(api),
            proxy: at(proxy),
            grpc: at(grpc),
            env,
            dir,
        }
    }

    /// The same server again (same ports, same `data_dir`).
    fn restart(&mut self) {
        self.proc = Proc::spawn("server", server_bin(), self.dir.path(), &self.env);
    }

    async fn wait_ready(&self) {
        eventually(Duration::from_secs(20), "server health", || async {
            let up = tokio::net::TcpStream::connect(self.api).await.is_ok();
            (up && get(self.api, "/health").await.status == 200).then_some(())
        })
        .await;
    }

    async fn agents(&self) -> serde_json::Value {
        let r = get_with(self.api, "/agents", &[("x-api-key", ADMIN_KEY)]).await;
        assert_eq!(r.status, 200, "GET /agents: {}", r.text());
        r.json()
    }

    /// The agent's port once it is listed.
    async fn agent_port(&self, id: &str) -> u16 {
        eventually(
            Duration::from_secs(15),
            &format!("agent {id} listed"),
            || async {
                self.agents().await["agents"]
                    .as_array()?
                    .iter()
                    .find(|a| a["agent_id"] == id)?["port"]
                    .as_u64()
                    .map(|p| p as u16)
            },
        )
        .await
    }

    async fn wait_unlisted(&self, id: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("agent {id} gone"),
            || async {
                let list = self.agents().await;
                let listed = list["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["agent_id"] == id));
                (!listed).then_some(())
            },
        )
        .await;
    }

    fn agent(&self, id: &str, service: &str) -> Proc {
        let env = [
            ("SILO_GRPC_SERVER_ADDRESS", self.grpc.to_string()),
            ("SILO_GRPC_AGENT_ID", id.to_owned()),
            ("SILO_LOCAL_SERVICE_URL", service.to_owned()),
            ("SILO_HTTP_PORT", "0".to_owned()),
            ("SILO_GRPC_TLS_ENABLED", "false".to_owned()),
        ];
        // The first call may build the binary: keep the runtime's other
        // worker (the in-process backend) running meanwhile.
        let bin = tokio::task::block_in_place(agent_bin);
        Proc::spawn("agent", bin, self.dir.path(), &env)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_carry_200_mib_each_way_in_bounded_memory() {
    let backend = Backend::spawn().await;
    let server = Server::start();
    server.wait_ready().await;
    let agent = server.agent("e2e-big", &backend.url());
    let port = server.agent_port("e2e-big").await;

    let r = get(at(port), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    let r = get(server.proxy, "/proxy/e2e-big/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    let r = get(at(port), "/cookies").await;
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly", "c=3"]);

    let total = 200 * MIB;
    let started = Instant::now();
    let resp = client::open(
        at(port),
        Request::get(format!("/bytes?n={total}"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let data = frame
            .expect("download frame")
            .into_data()
            .unwrap_or_default();
        assert!(is_pattern(&data, received), "corrupt data at {received}");
        received += data.len() as u64;
    }
    assert_eq!(received, total);
    let download = started.elapsed();

    let started = Instant::now();
    let resp = client::open(
        server.proxy,
        Request::post("/proxy/e2e-big/count")
            .header("content-length", total.to_string())
            .body(pattern_upload(total, |_| async {}))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["bytes"].as_u64(), v["sum"].as_u64()),
        (Some(total), Some(pattern_sum(total)))
    );
    let upload = started.elapsed();

    let (server_rss, agent_rss) = (server.proc.peak_rss_kib(), agent.peak_rss_kib());
    eprintln!(
        "200 MiB down in {download:?}, up in {upload:?}; peak RSS server {} MiB, agent {} MiB",
        server_rss / 1024,
        agent_rss / 1024
    );
    assert!(
        server_rss < RSS_LIMIT_KIB,
        "server peak RSS {server_rss} KiB"
    );
    assert!(agent_rss < RSS_LIMIT_KIB, "agent peak RSS {agent_rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_a_prompt_502_and_comes_back_on_its_port() {
    let backend = Backend::spawn().await;
    let mut server = Server::start();
    server.wait_ready().await;
    let mut agent = server.agent("e2e-kill", &backend.url());
    let port = server.agent_port("e2e-kill").await;

    // Two requests waiting for the backend, one per listener.
    let (proxy, obs) = (server.proxy, backend.observed.clone());
    let waiting = [
        tokio::spawn(async move { get(at(port), "/hang").await }),
        tokio::spawn(async move { get(proxy, "/proxy/e2e-kill/hang").await }),
    ];
    eventually(Duration::from_secs(5), "both requests at the backend", || {
        let obs = obs.clone();
        async move { (obs.requests.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(()) }
    })
    .await;
    // And a download under way (its head already sent, so no 502 is
    // possible any more: it must be cut, not left hanging).
    let resp = client::open(
        at(port),
        Request::get(format!("/bytes?n={}", 1024 * MIB))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut download = resp.into_body();
    download.frame().await.unwrap().unwrap();
    agent.kill(); // SIGKILL: no goodbye on the tunnel
    let killed = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match download.frame().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.map(|_| ())),
            }
        }
    })
    .await
    .expect("the download cut promptly, not left hanging");
    assert!(
        matches!(cut, Some(Err(_))),
        "the cut download must not look complete: {cut:?}"
    );
    for w in waiting {
        let r = tokio::time::timeout(Duration::from_secs(3), w)
            .await
            .expect("a prompt answer, not a hang")
            .unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("e2e-kill"),
            "{}",
            r.text()
        );
    }
    eprintln!("502s {:?} after the kill", killed.elapsed());
    server.wait_unlisted("e2e-kill").await;
    let r = get(server.proxy, "/proxy/e2e-kill/hello").await;
    assert_eq!(r.status, 502);

    // Restarting the agent brings it back on the same port.
    let agent = server.agent("e2e-kill", &backend.url());
    assert_eq!(server.agent_port("e2e-kill").await, port);
    assert_eq!(get(at(port), "/hello").await.text(), "hello");

    // Restarting the server (SIGTERM: a clean exit) brings the agent back
    // by itself within a few seconds, on its port.
    let status = server.proc.terminate(Duration::from_secs(10));
    assert!(status.success(), "server exit status {status}");
    server.restart();
    server.wait_ready().await;
    let restarted = Instant::now();
    assert_eq!(server.agent_port("e2e-kill").await, port);
    eprintln!(
        "agent back {:?} after the server restart",
        restarted.elapsed()
    );
    assert!(restarted.elapsed() < Duration::from_secs(8));
    assert_eq!(get(at(port), "/hello").await.text(), "hello");
    drop(agent);
}

/// Runs a binary to completion with `env` in a temp directory.
fn run(bin: &Path, args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configuration_stops_the_server_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        server_bin(),
        &[],
        &[("HTTP_AGENT_PORT_RANGE_END", "1")],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("http.agent_port_range.end"), "{err}");

    let yaml = dir.path().join("bad.yaml");
    std::fs::write(&yaml, "http:\n  port: 8080\n  agent_portz: true\n").unwrap();
    let (code, _, err) = run(
        server_bin(),
        &["--config", yaml.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("http.agent_portz"), "{err}");

    let yaml = dir.path().join("zero.yaml");
    std::fs::write(&yaml, "proxy:\n  request_timeout_seconds: 0\n").unwrap();
    let (code, _, err) = run(
        server_bin(),
        &["--check-config", "--config", yaml.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("proxy.request_timeout_seconds"), "{err}");
    // Nothing was started or created for a configuration that failed.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn help_version_and_check_config_work_for_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, name) in [
        (server_bin(), "silo-proxy-server"),
        (agent_bin(), "silo-proxy-agent"),
    ] {
        let (code, out, err) = run(bin, &["--help"], &[], dir.path());
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("--config") && out.contains("--check-config"),
            "{out}"
        );
        let (code, out, _) = run(bin, &["--version"], &[], dir.path());
        assert_eq!(code, 0);
        assert_eq!(out.trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
    // The server starts on its defaults alone.
    let (code, out, err) = run(server_bin(), &["--check-config"], &[], dir.path());
    assert_eq!(code, 0, "server --check-config on defaults: {err}");
    assert!(out.contains("configuration OK"), "{out}");
    // The agent's defaults expect certificates (TLS is on by default); in
    // the clear it needs nothing else.
    let plain = ("GRPC_TLS_ENABLED", "false");
    let (code, out, err) = run(agent_bin(), &["--check-config"], &[plain], dir.path());
    assert_eq!(code, 0, "agent --check-config: {err}");
    assert!(out.contains("configuration OK"), "{out}");
    // And it names its bad keys too.
    let (code, _, err) = run(
        agent_bin(),
        &["--check-config"],
        &[plain, ("GRPC_AGENT_ID", "not/valid")],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("grpc.agent_id"), "{err}");
}
