//! Helpers of the provisioning logic tests: a real store (temp SQLite)
//! and a real CA (temp dir), no HTTP.
#![allow(dead_code)]

use silo_pki::{CaPaths, KeyType, Pki, ServerCertSpec};
use silo_server::config::ServerConfig;
use silo_server::provision::{Ctx, ProvisionError, Settings, issue, keys};
use silo_store::Store;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use time::OffsetDateTime;

pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub pki: Arc<Pki>,
    pub signer: Arc<silo_pki::LocalCaSigner>,
    pub settings: Settings,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(dir.path().join("silo.db"))
            .await
            .unwrap();
        let spec = ServerCertSpec {
            domain_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            key_type: KeyType::EcdsaP256,
        };
        let (pki, _) = Pki::load_or_init(&CaPaths::under_data_dir(dir.path()), &spec).unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let settings = Settings::from_config(&config);
        let signer = pki.signer();
        Self {
            _dir: dir,
            store,
            pki: Arc::new(pki),
            signer,
            settings,
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            store: &self.store,
            signer: Some(self.signer.as_ref()),
            settings: &self.settings,
        }
    }

    pub async fn key(&self, agent: &str) -> keys::CreatedKey {
        let now = OffsetDateTime::now_utc();
        keys::create_key(self.ctx(), agent, self.settings.key_ttl, "test", None, now)
            .await
            .unwrap()
    }

    pub async fn provision(
        &self,
        key: &str,
        csr: Option<&str>,
    ) -> Result<issue::Provisioned, ProvisionError> {
        issue::provision(self.ctx(), key, csr, CLIENT, OffsetDateTime::now_utc()).await
    }

    pub async fn key_status(&self, id: &str) -> String {
        let all = keys::list_keys(self.ctx(), true, OffsetDateTime::now_utc())
            .await
            .unwrap();
        all.into_iter()
            .find(|k| k.id == id)
            .map(|k| k.status.to_owned())
            .unwrap()
    }

    pub async fn actions(&self) -> Vec<String> {
        let events = self.store.list_audit_events(None, 1000).await.unwrap();
        events.into_iter().map(|e| e.action).collect()
    }
}

pub fn csr(agent: &str) -> (silo_pki::KeyPair, String) {
    let key = silo_pki::generate_key(KeyType::EcdsaP256).unwrap();
    let pem = silo_pki::generate_csr(agent, &key).unwrap();
    (key, pem)
}

pub fn unauthorized(r: Result<issue::Provisioned, ProvisionError>) -> &'static str {
    match r {
        Err(ProvisionError::Unauthorized(m)) => m,
        other => panic!("expected 401, got {other:?}"),
    }
}

pub fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
