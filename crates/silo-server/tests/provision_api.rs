//! The provisioning endpoints over the server's HTTPS API listener,
//! reached with the pinning client the CLIs use.

mod api_support;

use api_support::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_to_certificate_over_https() {
    let server = tls_server(30).await;
    let api = admin(&server).await;
    let created = create_key(&api, "edge-1").await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sk_") && key.len() == 67);
    let ca = ca_pem(&server).await;
    let ca_sha = silo_pki::parse_cert_info(ca.as_bytes()).unwrap().sha256_hex;
    assert_eq!(created["ca_sha256"], ca_sha.as_str());
    assert_eq!(created["agent_id"], "edge-1");
    assert_eq!(
        created["server_url"],
        format!("https://localhost:{}", server.config.http.port)
    );
    assert_eq!(
        created["grpc_address"],
        format!("localhost:{}", server.config.grpc.port)
    );
    assert!(
        created["command"]
            .as_str()
            .unwrap()
            .contains(&format!("--ca-sha256 {ca_sha}"))
    );
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));

    let list = api
        .call(Method::GET, "/api/v1/provision-keys", None)
        .await
        .unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["keys"][0]["status"], "active");
    assert_eq!(list["keys"][0]["id"], created["id"]);
    assert!(
        !list.to_string().contains(&key[3..]),
        "the secret is never listed"
    );

    let anon = anonymous(&server).await;
    let (_, pem) = csr("edge-1");
    let (status, body) = provision(&anon, key, &pem).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_id"], "edge-1");
    assert_eq!(body["ca_cert_pem"], ca.as_str());
    assert!(body.get("key_pem").is_none());
    let info = silo_pki::parse_cert_info(body["cert_pem"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(info.cn.as_deref(), Some("edge-1"));

    let (status, again) = provision(&anon, key, &pem).await;
    assert_eq!((status, &again["cert_pem"]), (200, &body["cert_pem"]));
    let (status, other) = provision(&anon, key, &csr("edge-1").1).await;
    assert_eq!(
        (status, other["error"].as_str()),
        (401, Some("provision key already used"))
    );

    let all = api
        .call(Method::GET, "/api/v1/provision-keys?all=true", None)
        .await
        .unwrap();
    assert_eq!(all["keys"][0]["status"], "used");
    assert!(all["keys"][0]["used_at"].is_string());
    let active = api
        .call(Method::GET, "/api/v1/provision-keys", None)
        .await
        .unwrap();
    assert_eq!(active["count"], 0);

    let certs = api
        .call(Method::GET, "/api/v1/certificates?agent_id=edge-1", None)
        .await
        .unwrap();
    assert_eq!(certs["count"], 1);
    let c = &certs["certificates"][0];
    assert_eq!(c["serial"], info.serial_hex.as_str());
    assert_eq!(c["sha256"], info.sha256_hex.as_str());
    assert_eq!(c["source"], "provision");
    assert!(c["revoked_at"].is_null());

    let audit = api
        .call(Method::GET, "/api/v1/audit?agent_id=edge-1&limit=50", None)
        .await
        .unwrap();
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.first(),
        Some(&"provision.failed"),
        "newest first: {actions:?}"
    );
    for a in [
        "provision_key.created",
        "certificate.issued",
        "provision.succeeded",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let created_event = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "provision_key.created")
        .unwrap();
    assert_eq!(created_event["actor"], "admin-key");
    assert_eq!(created_event["remote_addr"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_requests_are_validated_and_admin_only() {
    let server = tls_server(30).await;
    let api = admin(&server).await;
    for (body, needle) in [
        (json!({"agent_id": "a", "ttl_hours": 0}), "ttl_hours"),
        (json!({"agent_id": "a", "ttl_hours": 721}), "ttl_hours"),
        (json!({"agent_id": "a", "ttl_seconds": 59}), "ttl_seconds"),
        (
            json!({"agent_id": "a", "ttl_seconds": 2_592_001}),
            "ttl_seconds",
        ),
        (json!({"agent_id": "a", "ttl_hours": "x"}), "ttl_hours"),
        (json!({"agent_id": "../x"}), "invalid agent id"),
        (json!({"agent_id": "x".repeat(65)}), "invalid agent id"),
        (json!({"ttl_hours": 1}), "agent_id"),
    ] {
        let r = api
            .send(Method::POST, "/api/v1/provision-keys", Some(&body))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert!(
            r.error_message().contains(needle),
            "{body}: {}",
            r.error_message()
        );
    }
    let short = api
        .send(
            Method::POST,
            "/api/v1/provision-keys",
            Some(&json!({"agent_id": "a", "ttl_seconds": 60})),
        )
        .await
        .unwrap();
    assert_eq!(short.status, 201);

    let anon = anonymous(&server).await;
    let r = anon
        .send(
            Method::POST,
            "/api/v1/provision-keys",
            Some(&json!({"agent_id": "a"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (401, "Missing API key")
    );
    let wrong = anonymous(&server).await.with_api_key("nope");
    for path in [
        "/api/v1/provision-keys",
        "/api/v1/certificates",
        "/api/v1/audit",
    ] {
        let r = wrong.send(Method::GET, path, None).await.unwrap();
        assert_eq!(
            (r.status, r.error_message().as_str()),
            (401, "Invalid API key"),
            "{path}"
        );
    }
    let r = api
        .send(Method::DELETE, "/api/v1/provision-keys/a", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"message": "Provision keys revoked", "revoked": 1})
    );
    let r = api
        .send(Method::DELETE, "/api/v1/provision-keys/a", None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (404, "No provision keys found for this agent")
    );
    let r = api
        .send(Method::DELETE, "/api/v1/provision-keys/..%2Fx", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    for path in [
        "/api/v1/certificates?agent_id=a%2Fb",
        "/api/v1/audit?agent_id=..",
        "/api/v1/audit?limit=0",
    ] {
        let r = api.send(Method::GET, path, None).await.unwrap();
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_limited_and_audited_but_successes_are_not_counted() {
    let server = tls_server(3).await;
    let api = admin(&server).await;
    let anon = anonymous(&server).await;
    // Successes from one address (a fleet behind one NAT) are not limited.
    for i in 0..4 {
        let agent = format!("fleet-{i}");
        let key = create_key(&api, &agent).await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, body) = provision(&anon, &key, &csr(&agent).1).await;
        assert_eq!(status, 200, "{body}");
    }
    let guess = format!("sk_{}", "0".repeat(64));
    for _ in 0..3 {
        let (status, body) = provision(&anon, &guess, &csr("x").1).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid provision key"))
        );
    }
    let r = anon
        .send(
            Method::POST,
            "/api/v1/provision",
            Some(&json!({"key": guess})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{:?}", r.body);
    // A real key is refused too while the address is blocked.
    let key = create_key(&api, "late").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = provision(&anon, &key, &csr("late").1).await;
    assert_eq!(status, 429);
    let audit = api
        .call(Method::GET, "/api/v1/audit?limit=100", None)
        .await
        .unwrap();
    let failed: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "provision.failed")
        .collect();
    assert_eq!(failed.len(), 3, "{audit}");
    assert!(failed.iter().all(|e| e["remote_addr"] == "127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_after_header_is_sent() {
    let server = tls_server(1).await;
    let trust = pin(&server).await;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(trust.rustls_config().unwrap().unwrap())
        .build()
        .unwrap();
    let u = format!("{}/api/v1/provision", url(&server));
    let body = json!({"key": "sk_nope"});
    assert_eq!(
        http.post(&u).json(&body).send().await.unwrap().status(),
        401
    );
    let r = http.post(&u).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_calls_with_one_key_yield_one_certificate() {
    let server = tls_server(100).await;
    let api = admin(&server).await;
    let key = create_key(&api, "race").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let anon = Arc::new(anonymous(&server).await);
    let csrs: Vec<String> = (0..20).map(|_| csr("race").1).collect();
    let tasks: Vec<_> = csrs
        .iter()
        .cloned()
        .map(|pem| {
            let (anon, key) = (anon.clone(), key.clone());
            tokio::spawn(async move { provision(&anon, &key, &pem).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        match status {
            200 => winners.push((i, body)),
            401 => assert_eq!(body["error"], "provision key already used"),
            429 => {}
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let (i, body) = &winners[0];
    let (status, again) = provision(&anon, &key, &csrs[*i]).await;
    assert_eq!((status, &again["cert_pem"]), (200, &body["cert_pem"]));
    let certs = api
        .call(Method::GET, "/api/v1/certificates?agent_id=race", None)
        .await
        .unwrap();
    assert_eq!(certs["count"], 1);
}
