//! Agent configuration (config.md, "Agent keys") and its validation.

use serde::{Deserialize, Serialize};
use silo_core::config::ConfigError;
use silo_core::logging::LogConfig;
use std::net::IpAddr;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub log: LogConfig,
    pub http: HealthConfig,
    pub grpc: GrpcConfig,
    pub local: LocalConfig,
    pub renew: RenewConfig,
    pub shutdown_grace_seconds: u64,
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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    pub server_name_override: String,
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
        if self.grpc.protocol != "native" {
            return Err(ConfigError::invalid(
                "grpc.protocol",
                &self.grpc.protocol,
                "native (the legacy client mode is not available yet)",
            ));
        }
        if self.grpc.tls.enabled {
            return Err(ConfigError::invalid(
                "grpc.tls.enabled",
                true,
                "false in this build (mutual TLS is not available yet)",
            ));
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

    #[test]
    fn defaults_are_valid() {
        AgentConfig::default().validate().unwrap();
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
            let mut c = AgentConfig::default();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
