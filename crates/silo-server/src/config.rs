//! Server configuration: the keys of config.md, their defaults, and the
//! validation that runs before anything starts.

use serde::{Deserialize, Serialize};
use silo_core::config::ConfigError;
use silo_core::duration::serde_duration;
use silo_core::logging::LogConfig;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Keys whose values never appear in logs.
pub const SECRET_KEYS: &[&str] = &["http.admin_api_key", "jwt.secret"];

/// A configured secret: serialised as is (config round trips), never shown
/// by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub log: LogConfig,
    pub data_dir: PathBuf,
    pub bind: String,
    pub shutdown_grace_seconds: u64,
    pub server: PublicConfig,
    pub db: DbConfig,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub proxy: ProxyConfig,
    pub grpc: GrpcConfig,
    pub provision: ProvisionConfig,
    pub metrics: MetricsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            data_dir: PathBuf::from("./data"),
            bind: "0.0.0.0".into(),
            shutdown_grace_seconds: 10,
            server: PublicConfig::default(),
            db: DbConfig::default(),
            jwt: JwtConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            proxy: ProxyConfig::default(),
            grpc: GrpcConfig::default(),
            provision: ProvisionConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicConfig {
    pub public_url: String,
    pub public_grpc_address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    pub url: String,
    pub schema: String,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            schema: "public".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub secret: Secret,
    pub expiration_minutes: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: Secret::default(),
            expiration_minutes: 1440,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub allow_registration: bool,
    pub login_max_failures_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_registration: false,
            login_max_failures_per_minute: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub port: u16,
    pub admin_api_key: Secret,
    pub generate_admin_api_key: bool,
    pub agent_ports: bool,
    pub agent_port_range: PortRange,
    pub base_domain: String,
    pub default_agent: String,
    pub trusted_proxies: Vec<String>,
    pub header_read_timeout_seconds: u64,
    pub max_json_bytes: u64,
    pub tls: HttpTlsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            port: 8080,
            admin_api_key: Secret::default(),
            generate_admin_api_key: true,
            agent_ports: true,
            agent_port_range: PortRange {
                start: 8100,
                end: 8200,
            },
            base_domain: String::new(),
            default_agent: String::new(),
            trusted_proxies: Vec::new(),
            header_read_timeout_seconds: 10,
            max_json_bytes: 65536,
            tls: HttpTlsConfig::default(),
        }
    }
}

/// `enabled: None` follows `grpc.tls.enabled`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsConfig {
    pub enabled: Option<bool>,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertKeyFiles {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub port: u16,
    pub tls: CertKeyFiles,
    pub request_timeout_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub max_request_body_bytes: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            port: 8000,
            tls: CertKeyFiles::default(),
            request_timeout_seconds: 30,
            idle_timeout_seconds: 300,
            max_request_body_bytes: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub port: u16,
    pub keepalive_seconds: u64,
    pub stale_after_seconds: u64,
    pub legacy: LegacyLimits,
    pub tls: GrpcTlsConfig,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            port: 9090,
            keepalive_seconds: 30,
            stale_after_seconds: 120,
            legacy: LegacyLimits::default(),
            tls: GrpcTlsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegacyLimits {
    pub max_request_body_bytes: u64,
    pub max_response_body_bytes: u64,
}

impl Default for LegacyLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 16 * 1024 * 1024,
            max_response_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Empty file paths mean "the default under `data_dir`".
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTlsConfig {
    pub enabled: bool,
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    pub ca_key_file: String,
    pub client_auth: String,
    pub domain_names: String,
    pub ip_addresses: String,
    pub agent_cert_dir: String,
    pub key_type: String,
}

impl Default for GrpcTlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            ca_key_file: String::new(),
            client_auth: "require".into(),
            domain_names: "localhost".into(),
            ip_addresses: "127.0.0.1".into(),
            agent_cert_dir: String::new(),
            key_type: "ecdsa-p256".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    pub enabled: Option<bool>,
    pub key_ttl_hours: u64,
    pub cleanup_interval_minutes: u64,
    pub history_days: u64,
    #[serde(with = "serde_duration")]
    pub cert_validity: Duration,
    pub cert_validity_days: Option<u64>,
    pub max_failures_per_minute: u32,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            key_ttl_hours: 24,
            cleanup_interval_minutes: 60,
            history_days: 30,
            cert_validity: Duration::from_secs(90 * 86400),
            cert_validity_days: None,
            max_failures_per_minute: 30,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub require_admin: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            require_admin: false,
        }
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, v, "a positive number"));
    }
    Ok(())
}

impl ServerConfig {
    /// Checks every value before anything starts; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log.validate()?;
        self.bind_addr()?;
        positive("shutdown_grace_seconds", self.shutdown_grace_seconds)?;
        positive("jwt.expiration_minutes", self.jwt.expiration_minutes)?;
        positive(
            "http.header_read_timeout_seconds",
            self.http.header_read_timeout_seconds,
        )?;
        positive("http.max_json_bytes", self.http.max_json_bytes)?;
        positive(
            "proxy.request_timeout_seconds",
            self.proxy.request_timeout_seconds,
        )?;
        positive(
            "proxy.idle_timeout_seconds",
            self.proxy.idle_timeout_seconds,
        )?;
        positive("grpc.keepalive_seconds", self.grpc.keepalive_seconds)?;
        positive("grpc.stale_after_seconds", self.grpc.stale_after_seconds)?;
        if self.grpc.stale_after_seconds <= self.grpc.keepalive_seconds {
            return Err(ConfigError::invalid(
                "grpc.stale_after_seconds",
                self.grpc.stale_after_seconds,
                format!(
                    "more than grpc.keepalive_seconds ({})",
                    self.grpc.keepalive_seconds
                ),
            ));
        }
        positive(
            "grpc.legacy.max_request_body_bytes",
            self.grpc.legacy.max_request_body_bytes,
        )?;
        positive(
            "grpc.legacy.max_response_body_bytes",
            self.grpc.legacy.max_response_body_bytes,
        )?;
        let range = self.http.agent_port_range;
        if range.start == 0 {
            return Err(ConfigError::invalid(
                "http.agent_port_range.start",
                range.start,
                "a port 1-65535",
            ));
        }
        if range.end < range.start {
            return Err(ConfigError::invalid(
                "http.agent_port_range.end",
                range.end,
                format!("a port >= http.agent_port_range.start ({})", range.start),
            ));
        }
        for (key, id) in [("http.default_agent", &self.http.default_agent)] {
            if !id.is_empty() {
                silo_core::id::validate_agent_id(id)
                    .map_err(|e| ConfigError::invalid(key, id, e))?;
            }
        }
        if !self.http.base_domain.is_empty()
            && (self.http.base_domain.starts_with('.') || self.http.base_domain.contains('/'))
        {
            return Err(ConfigError::invalid(
                "http.base_domain",
                &self.http.base_domain,
                "a domain name such as tunnel.example.com",
            ));
        }
        let tls = &self.grpc.tls;
        if !["require", "request", "none"].contains(&tls.client_auth.as_str()) {
            return Err(ConfigError::invalid(
                "grpc.tls.client_auth",
                &tls.client_auth,
                "one of require, request, none",
            ));
        }
        if !["ecdsa-p256", "rsa-2048", "rsa-4096"].contains(&tls.key_type.as_str()) {
            return Err(ConfigError::invalid(
                "grpc.tls.key_type",
                &tls.key_type,
                "one of ecdsa-p256, rsa-2048, rsa-4096",
            ));
        }

        if self.provision.enabled == Some(true) && !tls.enabled {
            return Err(ConfigError::invalid(
                "provision.enabled",
                true,
                "false while grpc.tls.enabled is false",
            ));
        }
        let http_tls = &self.http.tls;
        if http_tls.cert_file.is_empty() != http_tls.key_file.is_empty() {
            return Err(ConfigError::invalid(
                "http.tls.key_file",
                &http_tls.key_file,
                "set together with http.tls.cert_file",
            ));
        }
        if http_tls.enabled == Some(true) && !tls.enabled && http_tls.cert_file.is_empty() {
            return Err(ConfigError::invalid(
                "http.tls.cert_file",
                "\"\"",
                "a certificate file when http.tls.enabled is true and grpc.tls.enabled is false",
            ));
        }
        if self.proxy.tls.cert_file.is_empty() != self.proxy.tls.key_file.is_empty() {
            return Err(ConfigError::invalid(
                "proxy.tls.key_file",
                &self.proxy.tls.key_file,
                "set together with proxy.tls.cert_file",
            ));
        }
        positive("provision.key_ttl_hours", self.provision.key_ttl_hours)?;
        positive(
            "provision.cleanup_interval_minutes",
            self.provision.cleanup_interval_minutes,
        )?;
        positive("provision.history_days", self.provision.history_days)?;
        if self.provision.cert_validity.is_zero() {
            return Err(ConfigError::invalid(
                "provision.cert_validity",
                "0",
                "a positive duration such as 90d",
            ));
        }
        if let Some(days) = self.provision.cert_validity_days {
            positive("provision.cert_validity_days", days)?;
        }
        if let Err(cidr) = crate::client_addr::TrustedProxies::parse(&self.http.trusted_proxies) {
            return Err(ConfigError::invalid(
                "http.trusted_proxies",
                cidr,
                "a list of IP addresses or CIDRs such as 10.0.0.0/8",
            ));
        }
        Ok(())
    }

    /// The address every listener binds.
    pub fn bind_addr(&self) -> Result<IpAddr, ConfigError> {
        self.bind
            .parse()
            .map_err(|_| ConfigError::invalid("bind", &self.bind, "an IP address such as 0.0.0.0"))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.proxy.request_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.proxy.idle_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn inverted_port_range_names_the_key() {
        let mut c = ServerConfig::default();
        c.http.agent_port_range = PortRange {
            start: 9000,
            end: 8000,
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.agent_port_range.end"), "{e}");
    }

    #[test]
    fn zero_timeouts_and_unknown_client_auth_are_refused() {
        let mut c = ServerConfig::default();
        c.proxy.request_timeout_seconds = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("proxy.request_timeout_seconds")
        );
        let mut c = ServerConfig::default();
        c.grpc.tls.client_auth = "maybe".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("grpc.tls.client_auth")
        );
        let c = ServerConfig {
            bind: "everywhere".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("bind"));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let mut c = ServerConfig::default();
        c.http.admin_api_key = Secret("hunter2-hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
