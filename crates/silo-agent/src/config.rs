//! Agent configuration (config.md, "Agent keys") and its validation.

use serde::{Deserialize, Serialize};
use silo_core::config::ConfigError;
use silo_core::logging::LogConfig;
use std::net::IpAddr;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub log: LogConfig,
    pub http: HealthConfig,
    pub grpc: GrpcConfig,
    pub local: LocalConfig,
    pub renew: RenewConfig,
    pub shutdown_grace_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            http: HealthConfig::default(),
            grpc: GrpcConfig::default(),
            local: LocalConfig::default(),
            renew: RenewConfig::default(),
            // config.md; 0 would be refused by `validate`.
            shutdown_grace_seconds: 10,
        }
    }
}

/// The agent's own `GET /health` listener; port 0 turns it off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub port: u16,
    pub bind: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            port: 8081,
            bind: "127.0.0.1".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub server_address: String,
    pub agent_id: String,
    pub protocol: String,
    pub tls: TlsConfig,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            server_address: "localhost:9090".into(),
            agent_id: "agent-1".into(),
            protocol: "native".into(),
            tls: TlsConfig::default(),
        }
    }
}

/// Mutual TLS is on by default (config.md); `provision` writes the files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    pub server_name_override: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            server_name_override: String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub service_url: String,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            service_url: "http://localhost:3000".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewConfig {
    pub enabled: bool,
}

impl Default for RenewConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log.validate()?;
        self.http.bind.parse::<IpAddr>().map_err(|_| {
            ConfigError::invalid(
                "http.bind",
                &self.http.bind,
                "an IP address such as 127.0.0.1",
            )
        })?;
        silo_core::id::validate_agent_id(&self.grpc.agent_id)
            .map_err(|e| ConfigError::invalid("grpc.agent_id", &self.grpc.agent_id, e))?;
        self.server_uri()?;
        self.service_uri()?;
        if !matches!(self.grpc.protocol.as_str(), "native" | "legacy") {
            return Err(ConfigError::invalid(
                "grpc.protocol",
                &self.grpc.protocol,
                "native or legacy (a server of the Go implementation)",
            ));
        }
        if self.grpc.tls.enabled {
            let tls = &self.grpc.tls;
            for (key, path) in [
                ("grpc.tls.cert_file", &tls.cert_file),
                ("grpc.tls.key_file", &tls.key_file),
                ("grpc.tls.ca_file", &tls.ca_file),
            ] {
                if path.is_empty() {
                    return Err(ConfigError::invalid(
                        key,
                        "\"\"",
                        "a file path (required with grpc.tls.enabled)",
                    ));
                }
                if let Err(e) = std::fs::metadata(path) {
                    return Err(ConfigError::invalid(
                        key,
                        path,
                        format!("a readable file ({e})"),
                    ));
                }
            }
        }
        if self.shutdown_grace_seconds == 0 {
            return Err(ConfigError::invalid(
                "shutdown_grace_seconds",
                0,
                "a positive number",
            ));
        }
        Ok(())
    }

    /// `grpc.server_address` as a URI (`host:port`, scheme optional).
    pub fn server_uri(&self) -> Result<http::Uri, ConfigError> {
        let addr = self.grpc.server_address.trim();
        let scheme = if self.grpc.tls.enabled {
            "https"
        } else {
            "http"
        };
        let with_scheme = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{scheme}://{addr}")
        };
        let uri: http::Uri = with_scheme.parse().map_err(|_| {
            ConfigError::invalid(
                "grpc.server_address",
                addr,
                "host:port such as tunnel.example.com:9090",
            )
        })?;
        if uri.port_u16().is_none() || uri.host().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "grpc.server_address",
                addr,
                "host:port such as tunnel.example.com:9090",
            ));
        }
        Ok(uri)
    }

    /// `local.service_url` as a URI with an http scheme and a host.
    pub fn service_uri(&self) -> Result<http::Uri, ConfigError> {
        let url = self.local.service_url.trim();
        let uri: http::Uri = url.parse().map_err(|_| {
            ConfigError::invalid(
                "local.service_url",
                url,
                "a URL such as http://localhost:3000",
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::invalid(
                "local.service_url",
                url,
                "an http:// URL such as http://localhost:3000",
            ));
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> AgentConfig {
        let mut c = AgentConfig::default();
        c.grpc.tls.enabled = false;
        c
    }

    #[test]
    fn defaults_without_tls_are_valid() {
        plain().validate().unwrap();
    }

    #[test]
    fn tls_by_default_needs_certificate_files() {
        let e = AgentConfig::default().validate().unwrap_err().to_string();
        assert!(e.contains("grpc.tls.cert_file"), "{e}");
        let mut c = AgentConfig::default();
        c.grpc.tls.cert_file = "/nonexistent/agent-cert.pem".into();
        c.grpc.tls.key_file = "/nonexistent/agent-key.pem".into();
        c.grpc.tls.ca_file = "/nonexistent/ca.pem".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("grpc.tls.cert_file") && e.contains("/nonexistent/agent-cert.pem"),
            "{e}"
        );
    }

    #[test]
    fn protocol_is_native_or_legacy() {
        let mut c = plain();
        c.shutdown_grace_seconds = 10;
        c.grpc.protocol = "legacy".into();
        c.validate().unwrap();
        c.grpc.protocol = "grpc".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("grpc.protocol") && e.contains("native or legacy"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        type Mutation = fn(&mut AgentConfig);
        let cases: [(&str, Mutation); 4] = [
            ("grpc.agent_id", |c| c.grpc.agent_id = "../etc".into()),
            ("grpc.server_address", |c| {
                c.grpc.server_address = "no-port".into()
            }),
            ("local.service_url", |c| {
                c.local.service_url = "ftp://x".into()
            }),
            ("http.bind", |c| c.http.bind = "localhost".into()),
        ];
        for (key, mutate) in cases {
            let mut c = plain();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
