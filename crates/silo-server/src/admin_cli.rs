//! The admin commands of `silo-proxy-server` (`keys create|list|revoke`,
//! `agents list`, `certs list|revoke`): clients of a running server's API,
//! replacing the original curl scripts.
//!
//! They take the same trust flags as `silo-proxy-agent provision`
//! (`--ca-sha256` | `--ca-file` | `--insecure`). Run on the server host
//! without flags, they find the server the way the server itself does: the
//! configuration (`--config`, `application.yaml`, environment) gives the
//! API port and TLS mode, `data_dir` the admin key file and the CA.

use crate::config::ServerConfig;
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use silo_client::{ApiClient, Method, Trust};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the server; every flag also works after the subcommand.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// API URL of the server [default: this host's server, from its configuration]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SILO_CLI_SERVER",
        hide_env_values = true
    )]
    pub server: Option<String>,
    /// Admin API key [default: http.admin_api_key or <data_dir>/admin-api-key]
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "SILO_CLI_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Trust the server whose CA certificate has this SHA-256.
    #[arg(long, global = true, value_name = "HEX")]
    pub ca_sha256: Option<String>,
    /// Trust the server whose certificate chains to this CA (PEM file)
    /// [env: SILO_CLI_CA_FILE; default: the local server's CA, if present]
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server (development only; prints a warning).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Seconds to wait for the server.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `keys …`
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a one-time provision key bound to an agent id.
    Create {
        #[arg(long, value_name = "ID")]
        agent_id: String,
        /// Lifetime in hours, 1..720 [default: provision.key_ttl_hours]
        #[arg(long, value_name = "N", conflicts_with = "ttl_seconds")]
        ttl_hours: Option<i64>,
        /// Lifetime in seconds, 60..2592000.
        #[arg(long, value_name = "N")]
        ttl_seconds: Option<i64>,
    },
    /// List active keys (never the secrets).
    List {
        /// Also used, expired and revoked keys still kept.
        #[arg(long)]
        all: bool,
    },
    /// Revoke every active key of an agent.
    Revoke {
        #[arg(long, value_name = "ID")]
        agent_id: String,
    },
}

/// `agents …`
#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: AgentsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentsCommand {
    /// List connected agents.
    List {
        /// Also known agents that are offline.
        #[arg(long)]
        all: bool,
    },
}

/// `certs …`
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// List issued certificates.
    List {
        #[arg(long, value_name = "ID")]
        agent_id: Option<String>,
    },
    /// Revoke every certificate of an agent and cut its live session.
    Revoke {
        #[arg(long, value_name = "ID")]
        agent_id: String,
    },
}

/// One admin command.
#[derive(Debug)]
pub enum AdminCommand {
    Keys(KeysArgs),
    Agents(AgentsArgs),
    Certs(CertsArgs),
}

/// Runs an admin command; the output goes to stdout.
pub async fn run(config_file: Option<PathBuf>, command: AdminCommand) -> anyhow::Result<()> {
    let (conn, request) = match &command {
        AdminCommand::Keys(a) => (&a.conn, keys_request(&a.command)),
        AdminCommand::Agents(a) => (&a.conn, agents_request(&a.command)),
        AdminCommand::Certs(a) => (&a.conn, certs_request(&a.command)),
    };
    let client = connect(conn, config_file)?;
    let body = client
        .call(request.method, &request.path, request.body.as_ref())
        .await?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", (request.render)(&body));
    }
    Ok(())
}

struct Request {
    method: Method,
    path: String,
    body: Option<Value>,
    render: fn(&Value) -> String,
}

fn keys_request(cmd: &KeysCommand) -> Request {
    match cmd {
        KeysCommand::Create {
            agent_id,
            ttl_hours,
            ttl_seconds,
        } => {
            let mut body = json!({ "agent_id": agent_id });
            if let Some(h) = ttl_hours {
                body["ttl_hours"] = json!(h);
            }
            if let Some(s) = ttl_seconds {
                body["ttl_seconds"] = json!(s);
            }
            Request {
                method: Method::POST,
                path: "/api/v1/provision-keys".into(),
                body: Some(body),
                render: render::created_key,
            }
        }
        KeysCommand::List { all } => Request {
            method: Method::GET,
            path: format!(
                "/api/v1/provision-keys{}",
                if *all { "?all=true" } else { "" }
            ),
            body: None,
            render: render::keys,
        },
        KeysCommand::Revoke { agent_id } => Request {
            method: Method::DELETE,
            path: format!("/api/v1/provision-keys/{}", path_segment(agent_id)),
            body: None,
            render: render::revoked_keys,
        },
    }
}

fn agents_request(cmd: &AgentsCommand) -> Request {
    match cmd {
        AgentsCommand::List { all } => Request {
            method: Method::GET,
            path: format!("/agents{}", if *all { "?all=true" } else { "" }),
            body: None,
            render: render::agents,
        },
    }
}

fn certs_request(cmd: &CertsCommand) -> Request {
    match cmd {
        CertsCommand::List { agent_id } => Request {
            method: Method::GET,
            path: match agent_id {
                Some(id) => format!("/api/v1/certificates?agent_id={}", path_segment(id)),
                None => "/api/v1/certificates".into(),
            },
            body: None,
            render: render::certificates,
        },
        CertsCommand::Revoke { agent_id } => Request {
            method: Method::DELETE,
            path: format!("/agents/{}/certificate", path_segment(agent_id)),
            body: None,
            render: render::revoked_certs,
        },
    }
}

/// Percent-encodes everything but unreserved characters, so an id can
/// never change the path (the server refuses invalid ids anyway).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Builds the client from the flags, filling the gaps from the local
/// server's configuration.
fn connect(conn: &Connection, config_file: Option<PathBuf>) -> anyhow::Result<ApiClient> {
    // The configuration matters only for defaults; a broken one is an
    // error only when a default is needed.
    let local = silo_core::config::load::<ServerConfig>(
        &silo_core::config::ConfigSource::for_process(config_file),
    )
    .map(|l| l.config);
    let local_ref = || {
        local
            .as_ref()
            .map_err(|e| anyhow!("reading the server configuration for defaults: {e}"))
    };

    let explicit = conn.ca_sha256.is_some() || conn.ca_file.is_some() || conn.insecure;
    let env_ca = std::env::var_os("SILO_CLI_CA_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let trust = if explicit {
        Trust::from_flags(
            conn.ca_sha256.as_deref(),
            conn.ca_file.as_deref(),
            conn.insecure,
        )?
    } else if let Some(path) = env_ca {
        Trust::ca_file(&path)?
    } else {
        match local.as_ref().ok().and_then(local_ca) {
            Some(path) => Trust::ca_file(&path)?,
            None => Trust::System,
        }
    };
    if matches!(trust, Trust::Insecure) {
        eprintln!(
            "WARNING: --insecure: the server's identity is NOT verified and the admin key may go to anyone on the network path"
        );
    }
    let server = match &conn.server {
        Some(s) => s.clone(),
        None => local_url(local_ref()?),
    };
    let api_key = match &conn.api_key {
        Some(k) => k.clone(),
        None => local_api_key(local_ref()?)?,
    };
    let client = ApiClient::new(&server, &trust, Duration::from_secs(conn.timeout))?;
    if client.base_url().scheme() == "http" && !is_loopback(client.base_url()) {
        eprintln!("WARNING: sending the admin key over plain http to {server}");
    }
    Ok(client.with_api_key(api_key))
}

fn is_loopback(url: &silo_client::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The local server's CA file, when TLS is on, the API uses our own
/// certificate, and the file exists.
fn local_ca(config: &ServerConfig) -> Option<PathBuf> {
    let api_tls = config.http.tls.enabled.unwrap_or(config.grpc.tls.enabled);
    if !api_tls || !config.http.tls.cert_file.is_empty() || !config.grpc.tls.enabled {
        return None;
    }
    let path = crate::tls::ca_paths(config).ca_cert;
    path.exists().then_some(path)
}

/// `https://localhost:<http.port>` (or the name the server certificate
/// carries), `http://` when the API listener is plain.
fn local_url(config: &ServerConfig) -> String {
    let api_tls = config.http.tls.enabled.unwrap_or(config.grpc.tls.enabled);
    let tls = &config.grpc.tls;
    let has = |list: &str, item: &str| list.split(',').any(|x| x.trim().eq_ignore_ascii_case(item));
    let host = if !api_tls || has(&tls.domain_names, "localhost") {
        "localhost".to_owned()
    } else if has(&tls.ip_addresses, "127.0.0.1") {
        "127.0.0.1".to_owned()
    } else {
        tls.domain_names
            .split(',')
            .map(str::trim)
            .find(|d| !d.is_empty())
            .unwrap_or("localhost")
            .to_owned()
    };
    let scheme = if api_tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", config.http.port)
}

/// `http.admin_api_key`, else the key file the server generated.
fn local_api_key(config: &ServerConfig) -> anyhow::Result<String> {
    if !config.http.admin_api_key.0.is_empty() {
        return Ok(config.http.admin_api_key.0.clone());
    }
    let path: &Path = &config.data_dir.join("admin-api-key");
    let key = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no admin API key: pass --api-key or SILO_CLI_API_KEY (cannot read {})",
            path.display()
        )
    })?;
    let key = key.trim();
    if key.is_empty() {
        bail!("{} is empty; pass --api-key", path.display());
    }
    Ok(key.to_owned())
}

mod render;
