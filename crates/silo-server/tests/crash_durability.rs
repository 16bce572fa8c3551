//! Killing the server with SIGKILL in the middle of a burst of writes and
//! starting it again on the same `data_dir` loses no write that was
//! acknowledged — on SQLite, and on PostgreSQL when
//! `SILO_TEST_POSTGRES_URL` is set.
//!
//! The built `silo-proxy-server` binary runs as a process, configured only
//! through the environment, exactly as a user would start it.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use silo_test_support::pg::PgSchema;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

const SERVER: &str = env!("CARGO_BIN_EXE_silo-proxy-server");
/// Start-up (a debug build, a fresh store, migrations) until `/health`.
const START_WITHIN: Duration = Duration::from_secs(15);
/// Writes acknowledged before the kill.
const ACKED_BEFORE_KILL: usize = 200;
const ACK_WITHIN: Duration = Duration::from_secs(60);
/// Concurrent writers: more than the server hashes passwords at once, so
/// there are always requests in flight, queued inside the server.
const WRITERS: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the database lives, beside `data_dir`.
#[derive(Clone)]
enum Db {
    Sqlite,
    Postgres { url: String, schema: String },
}

/// A server process; SIGKILLed when dropped (also when a test panics).
struct ServerProcess {
    child: Child,
    api: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` with fresh free ports and waits for
    /// `GET /health` to answer 200.
    async fn start(root: &Path, data_dir: &Path, db: &Db, run: usize) -> Self {
        let [http, proxy, grpc] = free_ports();
        let log = root.join(format!("server-{run}.log"));
        let out = File::create(&log).expect("server log file");
        let err = out.try_clone().expect("server log file");
        let mut cmd = Command::new(SERVER);
        // Nothing of the caller's environment may reconfigure the server.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("SILO_") || name.starts_with("DB_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("run")
            .current_dir(root) // no application.yaml there
            .env("DATA_DIR", data_dir)
            .env("BIND", "127.0.0.1")
            .env("HTTP_PORT", http.to_string())
            .env("PROXY_PORT", proxy.to_string())
            .env("GRPC_PORT", grpc.to_string())
            .env("GRPC_TLS_ENABLED", "false")
            .env_remove("HTTP_ADMIN_API_KEY")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Db::Postgres { url, schema } = db {
            cmd.env("DB_URL", url).env("DB_SCHEMA", schema);
        }
        let child = cmd.spawn().expect("starting silo-proxy-server");
        let mut server = Self {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], http)),
            log,
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the server") {
                panic!("the server exited with {status}:\n{}", self.log_text());
            }
            let req = Request::get("/health").body(Full::default()).unwrap();
            if let Ok((StatusCode::OK, _)) = call(self.api, req).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no 200 from GET /health within {START_WITHIN:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, then reap; panics unless it was the signal that ended it.
    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reaping the server");
        assert_eq!(
            status.signal(),
            Some(9),
            "the server must die by SIGKILL, not exit ({status}):\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Three distinct loopback ports that were free a moment ago.
fn free_ports() -> [u16; 3] {
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let port = |i: usize| held[i].local_addr().unwrap().port();
    [port(0), port(1), port(2)]
}

/// How a request that got no response failed.
enum Failure {
    /// Nothing was sent: the connection could not be opened.
    Connect(String),
    /// The request was sent (or being sent) and no full response came.
    InFlight(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::InFlight(e) => write!(f, "no response: {e}"),
        }
    }
}

/// One request over a fresh connection; never panics.
async fn call(
    addr: SocketAddr,
    mut req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    tokio::spawn(conn);
    req.headers_mut()
        .insert(http::header::HOST, addr.to_string().parse().unwrap());
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Failure::InFlight(e.to_string())),
        Err(_) => Err(Failure::InFlight(format!(
            "no answer in {REQUEST_TIMEOUT:?}"
        ))),
    }
}

fn create_user(key: &str, n: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "username": format!("u{n}"),
        "password": format!("password-{n}"),
        "role": "User",
    });
    Request::post("/users")
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// What the writers saw.
#[derive(Default)]
struct Outcome {
    /// Usernames answered with 201.
    acked: Vec<String>,
    /// Answers other than 201, and failures, before the kill.
    unexpected: Vec<String>,
    /// Requests sent before the kill that never got their answer.
    cut_off: usize,
}

/// `WRITERS` tasks creating `u1000`, `u1001`, … until the server is gone.
/// Returns the shared outcome and a receiver of the acknowledged count.
fn start_burst(
    api: SocketAddr,
    key: &str,
    killed: &Arc<AtomicBool>,
) -> (
    Arc<Mutex<Outcome>>,
    tokio::sync::watch::Receiver<usize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let (acks_tx, acks_rx) = tokio::sync::watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    // Three digits at least: usernames are 3..255 characters.
    let next = Arc::new(AtomicU64::new(1000));
    let tasks = (0..WRITERS)
        .map(|_| {
            let (outcome, acks_tx, next) = (outcome.clone(), acks_tx.clone(), next.clone());
            let (killed, key) = (killed.clone(), key.to_owned());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let result = call(api, create_user(&key, n)).await;
                    let after_kill = killed.load(Ordering::SeqCst);
                    let mut o = outcome.lock().unwrap();
                    match result {
                        Ok((StatusCode::CREATED, body)) => {
                            let reply: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            if reply["username"] != format!("u{n}").as_str() {
                                o.unexpected.push(format!("u{n}: 201 with {reply}"));
                            }
                            o.acked.push(format!("u{n}"));
                            acks_tx.send_replace(o.acked.len());
                        }
                        Ok((status, body)) => o
                            .unexpected
                            .push(format!("u{n}: {status} {}", String::from_utf8_lossy(&body))),
                        Err(Failure::InFlight(_)) if after_kill => o.cut_off += 1,
                        Err(Failure::Connect(_)) if after_kill => return,
                        Err(e) => o.unexpected.push(format!("u{n}: {e}")),
                    }
                    // A server that died on its own: stop, the main task
                    // reports what was seen.
                    if o.unexpected.len() >= 20 {
                        return;
                    }
                }
            })
        })
        .collect();
    (outcome, acks_rx, tasks)
}

/// Every username, from `GET /users?page=N&page_size=100`.
async fn list_usernames(api: SocketAddr, key: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for page in 1.. {
        let req = Request::get(format!("/users?page={page}&page_size=100"))
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap();
        let (status, body) = call(api, req)
            .await
            .unwrap_or_else(|e| panic!("GET /users: {e}"));
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::OK, "GET /users page {page}: {text}");
        let reply: serde_json::Value = serde_json::from_slice(&body).expect("JSON users page");
        let users = reply["users"].as_array().expect("users array");
        for u in users {
            let name = u["username"].as_str().expect("username").to_owned();
            assert!(names.insert(name), "{u} listed twice");
        }
        let total = reply["total"].as_u64().expect("total") as usize;
        if users.len() < 100 || names.len() >= total {
            assert_eq!(names.len(), total, "pages add up to total");
            break;
        }
    }
    names
}

fn read_key(data_dir: &Path) -> Option<String> {
    let key = std::fs::read_to_string(data_dir.join("admin-api-key")).ok()?;
    let key = key.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

async fn wait_for_key(data_dir: &Path) -> String {
    silo_test_support::eventually(START_WITHIN, "<data_dir>/admin-api-key", || async {
        read_key(data_dir)
    })
    .await
}

async fn acknowledged_writes_survive_sigkill(db: Db) {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut first = ServerProcess::start(root.path(), &data_dir, &db, 1).await;
    let key = wait_for_key(&data_dir).await;

    let killed = Arc::new(AtomicBool::new(false));
    let (outcome, mut acks, tasks) = start_burst(first.api, &key, &killed);
    let reached = tokio::time::timeout(ACK_WITHIN, acks.wait_for(|n| *n >= ACKED_BEFORE_KILL))
        .await
        .is_ok_and(|r| r.is_ok());
    let so_far = *acks.borrow();
    assert!(
        reached,
        "only {so_far} writes acknowledged in {ACK_WITHIN:?}; unexpected: {:?}\n{}",
        outcome.lock().unwrap().unexpected,
        first.log_text()
    );
    // The writers keep going: the kill lands while requests are in flight.
    killed.store(true, Ordering::SeqCst);
    first.sigkill();
    for task in tasks {
        tokio::time::timeout(REQUEST_TIMEOUT * 2, task)
            .await
            .expect("writers stop once the server is gone")
            .expect("writer task");
    }
    let outcome = std::mem::take(&mut *outcome.lock().unwrap());
    assert!(
        outcome.unexpected.is_empty(),
        "answers other than 201 before the kill: {:?}\n{}",
        outcome.unexpected,
        first.log_text()
    );
    assert!(
        outcome.cut_off > 0,
        "the kill must interrupt requests in flight"
    );
    drop(first);

    let second = ServerProcess::start(root.path(), &data_dir, &db, 2).await;
    assert_eq!(
        read_key(&data_dir).as_deref(),
        Some(key.as_str()),
        "same admin key"
    );
    let listed = list_usernames(second.api, &key).await;
    let lost: Vec<&String> = outcome
        .acked
        .iter()
        .filter(|name| !listed.contains(*name))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged users lost after SIGKILL ({} requests were cut off): {lost:?}",
        lost.len(),
        outcome.acked.len(),
        outcome.cut_off
    );
    assert!(listed.contains("root"), "root survives");
    let acked: BTreeSet<&String> = outcome.acked.iter().collect();
    // Shown with a failure (captured otherwise): what the kill interrupted.
    eprintln!(
        "{} acknowledged, {} cut off by the kill, {} stored without an answer",
        acked.len(),
        outcome.cut_off,
        listed
            .iter()
            .filter(|n| *n != "root" && !acked.contains(n))
            .count()
    );

    // The last acknowledged row is whole: its password hash works.
    let last = outcome.acked.last().expect("acknowledged writes");
    let n = &last[1..];
    let login = serde_json::json!({"username": last, "password": format!("password-{n}")});
    let req = Request::post("/auth/login")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(login.to_string())))
        .unwrap();
    let (status, body) = call(second.api, req)
        .await
        .unwrap_or_else(|e| panic!("POST /auth/login: {e}"));
    assert_eq!(
        status,
        StatusCode::OK,
        "login as {last}: {}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_on_sqlite() {
    acknowledged_writes_survive_sigkill(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_on_postgres() {
    let Some(pg) = PgSchema::create("acknowledged_writes_survive_sigkill_on_postgres").await else {
        return;
    };
    let db = Db::Postgres {
        url: pg.url.clone(),
        schema: pg.schema.clone(),
    };
    // The server processes are gone when this returns; `pg` then drops
    // the schema with everything in it.
    acknowledged_writes_survive_sigkill(db).await;
    drop(pg);
}
