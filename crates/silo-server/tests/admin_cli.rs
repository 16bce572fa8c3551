//! `silo-proxy-server keys|agents|certs …` run as processes against an
//! in-process HTTPS server.

use serde_json::Value;
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{TestServer, eventually};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_silo-proxy-server");

struct Setup {
    server: TestServer,
    url: String,
    pin: String,
    /// An empty working directory (no application.yaml to pick up).
    cwd: tempfile::TempDir,
}

async fn setup() -> Setup {
    let server = TestServer::spawn_with(|c| c.grpc.tls.enabled = true).await;
    let ca = silo_pki::CaPaths::under_data_dir(&server.config.data_dir).ca_cert;
    let pem = eventually(Duration::from_secs(10), "the server's CA", || async {
        std::fs::read_to_string(&ca).ok()
    })
    .await;
    let pin = silo_pki::parse_cert_info(pem.as_bytes())
        .unwrap()
        .sha256_hex;
    let url = format!("https://localhost:{}", server.api.port());
    Setup {
        server,
        url,
        pin,
        cwd: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    /// Runs the CLI with the explicit connection flags.
    async fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--server",
            &self.url,
            "--api-key",
            ADMIN_KEY,
            "--ca-sha256",
            &self.pin,
        ]);
        self.raw(&all).await
    }

    async fn raw(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(SERVER)
            .args(args)
            .current_dir(self.cwd.path())
            .env_remove("SILO_CLI_SERVER")
            .env_remove("SILO_CLI_API_KEY")
            .env_remove("SILO_CLI_CA_FILE")
            .output()
            .await
            .expect("run silo-proxy-server")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn failed_with(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_list_revoke() {
    let s = setup().await;
    let created = json(
        &s.cli(&[
            "keys",
            "create",
            "--agent-id",
            "cli-a",
            "--ttl-hours",
            "2",
            "--json",
        ])
        .await,
    );
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sk_"));
    assert_eq!(created["ca_sha256"], s.pin.as_str());

    let human = ok(&s.cli(&["keys", "create", "--agent-id", "cli-b"]).await);
    assert!(
        human.contains("silo-proxy-agent provision --server"),
        "{human}"
    );
    assert!(human.contains(&s.pin), "{human}");

    let list = ok(&s.cli(&["keys", "list"]).await);
    assert!(
        list.contains("cli-a") && list.contains("cli-b") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&key[3..]), "never the secret: {list}");

    let revoked = ok(&s.cli(&["keys", "revoke", "--agent-id", "cli-a"]).await);
    assert!(revoked.contains("Provision keys revoked (1)"), "{revoked}");
    failed_with(
        &s.cli(&["keys", "revoke", "--agent-id", "cli-a"]).await,
        "No provision keys found for this agent",
    );
    let all = json(&s.cli(&["keys", "list", "--all", "--json"]).await);
    let statuses: Vec<&str> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"revoked") && statuses.contains(&"active"),
        "{statuses:?}"
    );

    failed_with(
        &s.cli(&["keys", "create", "--agent-id", "../x"]).await,
        "invalid agent id",
    );
    failed_with(
        &s.cli(&["keys", "create", "--agent-id", "a", "--ttl-hours", "0"])
            .await,
        "ttl_hours",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_and_certs_revoke() {
    let s = setup().await;
    let agents = json(&s.cli(&["agents", "list", "--json"]).await);
    assert_eq!(agents["count"], 0);
    assert!(ok(&s.cli(&["agents", "list"]).await).contains("no agents"));
    failed_with(
        &s.cli(&["certs", "revoke", "--agent-id", "ghost"]).await,
        "404",
    );

    // A server-generated certificate, then its revocation.
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(
            silo_client::Trust::pin(&s.pin)
                .unwrap()
                .rustls_config()
                .unwrap()
                .unwrap(),
        )
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/agents/old-1/certificate", s.url))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let certs = ok(&s.cli(&["certs", "list", "--agent-id", "old-1"]).await);
    assert!(certs.contains("legacy-zip"), "{certs}");
    let out = ok(&s.cli(&["certs", "revoke", "--agent-id", "old-1"]).await);
    assert!(out.contains("old-1/old-1-key.pem"), "{out}");
    let listed = json(&s.cli(&["certs", "list", "--json"]).await);
    assert!(listed["certificates"][0]["revoked_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_come_from_the_local_server_configuration() {
    let s = setup().await;
    let data_dir = &s.server.config.data_dir;
    std::fs::write(data_dir.join("admin-api-key"), format!("{ADMIN_KEY}\n")).unwrap();
    let config = s.cwd.path().join("server.yaml");
    write_config(&config, data_dir, s.server.api.port());
    let out = s
        .raw(&[
            "keys",
            "create",
            "--agent-id",
            "local-1",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ])
        .await;
    let created = json(&out);
    assert_eq!(created["agent_id"], "local-1");

    // The environment names the server and key too.
    let out = tokio::process::Command::new(SERVER)
        .args(["keys", "list", "--json"])
        .current_dir(s.cwd.path())
        .env("SILO_CLI_SERVER", &s.url)
        .env("SILO_CLI_API_KEY", ADMIN_KEY)
        .env(
            "SILO_CLI_CA_FILE",
            silo_pki::CaPaths::under_data_dir(data_dir).ca_cert,
        )
        .output()
        .await
        .unwrap();
    assert_eq!(json(&out)["count"], 1);

    let out = s
        .raw(&[
            "keys",
            "list",
            "--server",
            &s.url,
            "--api-key",
            "wrong",
            "--ca-sha256",
            &s.pin,
        ])
        .await;
    failed_with(&out, "Invalid API key");
    let wrong = "cd".repeat(32);
    let out = s
        .raw(&[
            "keys",
            "list",
            "--server",
            &s.url,
            "--api-key",
            ADMIN_KEY,
            "--ca-sha256",
            &wrong,
        ])
        .await;
    failed_with(&out, "does not match --ca-sha256");
    let out = s
        .raw(&[
            "keys",
            "list",
            "--server",
            &s.url,
            "--api-key",
            ADMIN_KEY,
            "--insecure",
            "--ca-sha256",
            &wrong,
        ])
        .await;
    assert!(!out.status.success(), "conflicting trust flags are refused");
}

fn write_config(path: &Path, data_dir: &Path, port: u16) {
    let yaml = format!(
        "data_dir: {:?}\nhttp:\n  port: {port}\ngrpc:\n  tls:\n    enabled: true\n",
        data_dir.display().to_string()
    );
    std::fs::write(path, yaml).unwrap();
}
