//! `silo-proxy-agent provision` run as a process against an in-process
//! HTTPS server, exactly as an operator would run it.

use serde_json::{Value, json};
use silo_client::{ApiClient, Method, Trust};
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_silo-proxy-agent");

struct Setup {
    server: TestServer,
    admin: ApiClient,
    ca_file: std::path::PathBuf,
    ca_sha256: String,
    url: String,
}

async fn setup() -> Setup {
    let server = TestServer::spawn_with(|c| c.grpc.tls.enabled = true).await;
    let ca_file = silo_pki::CaPaths::under_data_dir(&server.config.data_dir).ca_cert;
    let pem = eventually(Duration::from_secs(10), "the server's CA", || async {
        std::fs::read_to_string(&ca_file).ok()
    })
    .await;
    let ca_sha256 = silo_pki::parse_cert_info(pem.as_bytes())
        .unwrap()
        .sha256_hex;
    let url = format!("https://localhost:{}", server.api.port());
    let admin = ApiClient::new(
        &url,
        &Trust::pin(&ca_sha256).unwrap(),
        Duration::from_secs(10),
    )
    .unwrap()
    .with_api_key(ADMIN_KEY);
    Setup {
        server,
        admin,
        ca_file,
        ca_sha256,
        url,
    }
}

impl Setup {
    async fn key(&self, agent: &str) -> Value {
        let body = json!({ "agent_id": agent });
        self.admin
            .call(Method::POST, "/api/v1/provision-keys", Some(&body))
            .await
            .unwrap()
    }

    async fn key_status(&self, id: &Value) -> String {
        let all = self
            .admin
            .call(Method::GET, "/api/v1/provision-keys?all=true", None)
            .await
            .unwrap();
        let key = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| &k["id"] == id)
            .unwrap();
        key["status"].as_str().unwrap().to_owned()
    }

    fn grpc_address(&self) -> String {
        format!("localhost:{}", self.server.grpc.port())
    }
}

async fn agent(args: &[&str]) -> Output {
    tokio::process::Command::new(AGENT)
        .arg("provision")
        .args(args)
        .env_remove("SILO_PROVISION_KEY")
        .output()
        .await
        .expect("run silo-proxy-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure is reported as one line on stderr.
fn failed_with(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        stderr(out)
    );
    let err = stderr(out);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `openssl` or reports it missing (the caller then skips).
fn openssl(args: &[&str]) -> Option<String> {
    match std::process::Command::new("openssl").args(args).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(_) => {
            eprintln!("SKIPPED: `openssl` is not on PATH (openssl {args:?})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_fails_before_the_key_is_sent() {
    let s = setup().await;
    let created = s.key("pin-1").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let wrong = "ab".repeat(32);
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        created["key"].as_str().unwrap(),
        "--cert-dir",
        certs.to_str().unwrap(),
        "--ca-sha256",
        &wrong,
    ])
    .await;
    failed_with(&out, "does not match --ca-sha256");
    assert_eq!(
        s.key_status(&created["id"]).await,
        "active",
        "the key was never sent"
    );
    assert!(!certs.join("agents").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_pin_provisions_and_the_agent_runs_with_it() {
    let s = setup().await;
    let created = s.key("cli-1").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let config = dir.path().join("agent.yaml");
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        created["key"].as_str().unwrap(),
        "--cert-dir",
        certs.to_str().unwrap(),
        "--ca-sha256",
        &s.ca_sha256.to_uppercase(),
        "--write-config",
        config.to_str().unwrap(),
        "--grpc-address",
        &s.grpc_address(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("provisioned agent cli-1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.key_status(&created["id"]).await, "used");

    let key = certs.join("agents/cli-1/cli-1-key.pem");
    let cert = certs.join("agents/cli-1/cli-1-cert.pem");
    let ca = certs.join("ca/ca-cert.pem");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&certs.join("agents/cli-1")), 0o700);
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(&s.ca_file).unwrap()
    );
    if let Some(v) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]) {
        assert!(v.contains(": OK"), "{v}");
        let text = openssl(&[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
        ])
        .unwrap();
        assert!(
            text.contains("CN=cli-1") || text.contains("CN = cli-1"),
            "{text}"
        );
        assert!(text.contains("URI:silo://agent/cli-1"), "{text}");
    }

    // The written configuration runs the agent over mTLS.
    let loaded = silo_core::config::load::<silo_agent::config::AgentConfig>(
        &silo_core::config::ConfigSource {
            file: Some(config),
            ..Default::default()
        },
    )
    .unwrap()
    .config;
    assert_eq!(loaded.grpc.agent_id, "cli-1");
    assert_eq!(loaded.grpc.server_address, s.grpc_address());
    let backend = Backend::spawn().await;
    let url = backend.url();
    let agent = TestAgent::spawn_with(s.server.grpc, "cli-1", &backend.url(), move |c| {
        *c = loaded;
        c.local.service_url = url;
        c.http.port = 0;
        c.shutdown_grace_seconds = 5;
    })
    .await;
    agent.wait_connected().await;
    let port = s.server.agent_port("cli-1").await;
    let r = silo_test_support::client::get(([127, 0, 0, 1], port).into(), "/hello").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_key_is_kept_without_force_and_the_key_is_not_spent() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = s.ca_file.to_str().unwrap().to_owned();
    let first = s.key("force-1").await;
    let args = |key: &str| {
        vec![
            "--server".to_owned(),
            s.url.clone(),
            "--key".into(),
            key.to_owned(),
            "--cert-dir".into(),
            certs.display().to_string(),
            "--ca-file".into(),
            ca.clone(),
        ]
    };
    let run = |a: Vec<String>| async move {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        agent(&a).await
    };
    let out = run(args(first["key"].as_str().unwrap())).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(yaml.contains("agent_id: \"force-1\""), "{yaml}");
    let key_file = certs.join("agents/force-1/force-1-key.pem");
    let before = std::fs::read(&key_file).unwrap();

    let second = s.key("force-1").await;
    let out = run(args(second["key"].as_str().unwrap())).await;
    failed_with(&out, "--force");
    assert_eq!(s.key_status(&second["id"]).await, "active");
    assert_eq!(std::fs::read(&key_file).unwrap(), before);

    let mut forced = args(second["key"].as_str().unwrap());
    forced.push("--force".into());
    let out = run(forced).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(&key_file).unwrap(), before);
    assert_eq!(mode(&key_file), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_one_clear_line() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cd = certs.to_str().unwrap();
    let typo = format!("sk_{}", "1".repeat(64));
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        &typo,
        "--cert-dir",
        cd,
        "--ca-sha256",
        &s.ca_sha256,
    ])
    .await;
    failed_with(&out, "invalid provision key");

    let created = s.key("once").await;
    let key = created["key"].as_str().unwrap();
    let ok = agent(&[
        "--server",
        &s.url,
        "--key",
        key,
        "--cert-dir",
        cd,
        "--ca-sha256",
        &s.ca_sha256,
    ])
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let other = dir.path().join("other");
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        key,
        "--cert-dir",
        other.to_str().unwrap(),
        "--ca-sha256",
        &s.ca_sha256,
    ])
    .await;
    failed_with(&out, "provision key already used");

    let plain = format!("http://localhost:{}", s.server.api.port());
    let out = agent(&[
        "--server",
        &plain,
        "--key",
        key,
        "--cert-dir",
        cd,
        "--insecure",
    ])
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("plain http"), "{}", stderr(&out));

    // A server the system roots do not know.
    let fresh = s.key("sys").await;
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        fresh["key"].as_str().unwrap(),
        "--cert-dir",
        other.to_str().unwrap(),
    ])
    .await;
    failed_with(&out, "TLS verification");
    assert_eq!(s.key_status(&fresh["id"]).await, "active");

    let out = agent(&["--server", &s.url, "--key", key, "--ca-sha256", "xyz"]).await;
    failed_with(&out, "--ca-sha256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_works_but_warns() {
    let s = setup().await;
    let created = s.key("dev-1").await;
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "--server",
        &s.url,
        "--key",
        created["key"].as_str().unwrap(),
        "--cert-dir",
        dir.path().to_str().unwrap(),
        "--insecure",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: --insecure"),
        "{}",
        stderr(&out)
    );
}
