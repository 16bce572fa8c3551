//! `silo-proxy-agent provision`: turn a provision key into this device's
//! own CA-signed client certificate, without the private key ever leaving
//! the device (config.md "Command line", security.md "Trust bootstrap").
//!
//! Steps: check the flags and the target directory (before the key is
//! spent), generate a key pair and a CSR, POST them over HTTPS with the
//! server verified per `--ca-sha256` / `--ca-file` / system roots (a wrong
//! pin fails in the handshake, before the key is sent), verify the answer,
//! write the files atomically, print or write the agent configuration.
//!
//! # Layout
//! - this file: the flags and the flow.
//! - [`verify`]: checks of the server's answer.
//! - [`output`]: the file layout, atomic writes, the agent configuration.

pub mod output;
pub mod verify;

use anyhow::{Context, anyhow, bail};
use silo_client::{ApiClient, Trust};
use silo_pki::KeyType;
use std::path::PathBuf;
use std::time::Duration;

/// The flags of `silo-proxy-agent provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// API URL of the server, e.g. https://tunnel.example.com:8080
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The provision key (sk_…), as printed when it was created.
    #[arg(
        long,
        value_name = "KEY",
        env = "SILO_PROVISION_KEY",
        hide_env_values = true
    )]
    pub key: String,
    /// Where the certificate files go: <DIR>/agents/<id>/ and <DIR>/ca/.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub cert_dir: PathBuf,
    /// Trust the server whose CA certificate has this SHA-256 (hex, as
    /// printed by the key creation and by the server at start).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["ca_file", "insecure"])]
    pub ca_sha256: Option<String>,
    /// Trust the server whose certificate chains to this CA (PEM file).
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server at all (development only; prints a warning).
    #[arg(long)]
    pub insecure: bool,
    /// Type of the key generated on this device.
    #[arg(long, value_name = "TYPE", default_value = "ecdsa-p256",
          value_parser = ["ecdsa-p256", "rsa-2048", "rsa-4096"])]
    pub key_type: String,
    /// Write the agent configuration to this file instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// Replace an existing key, certificate or configuration file.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the server (connection and answer).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Tunnel address for the configuration (default: <host of --server>:9090).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_address: Option<String>,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct Provisioned {
    pub agent_id: String,
    pub files: output::Files,
    pub config_yaml: String,
    pub not_after: String,
}

/// Runs the command. Errors are one line each (`{:#}` joins causes).
pub async fn run(args: ProvisionArgs) -> anyhow::Result<Provisioned> {
    let trust = Trust::from_flags(
        args.ca_sha256.as_deref(),
        args.ca_file.as_deref(),
        args.insecure,
    )?;
    if matches!(trust, Trust::Insecure) {
        eprintln!(
            "WARNING: --insecure: the server's identity is NOT verified; anyone on the network path \
             can take the provision key and hand this device a certificate of their choosing. \
             Use --ca-sha256 outside development."
        );
    }
    let key = args.key.trim();
    if key.is_empty() {
        bail!("--key is empty");
    }
    let client = ApiClient::new(&args.server, &trust, Duration::from_secs(args.timeout))?;
    if client.base_url().scheme() != "https" {
        bail!("refusing to send a provision key over plain http: use an https:// --server URL");
    }
    let grpc_address = match &args.grpc_address {
        Some(a) => output::check_grpc_address(a)?,
        None => output::default_grpc_address(client.base_url())?,
    };
    // Everything that can be refused locally is refused before the key is
    // spent: the server consumes it on the first successful call.
    output::check_targets(&args.cert_dir, args.write_config.as_deref(), args.force)?;
    let key_type: KeyType = args
        .key_type
        .parse()
        .map_err(|e| anyhow!("--key-type: {e}"))?;
    let pair = silo_pki::generate_key(key_type).context("generating the key pair")?;
    let csr = verify::csr_pem(&pair).context("building the CSR")?;

    let body = serde_json::json!({ "key": key, "csr": csr });
    let answer = client
        .call(silo_client::Method::POST, "/api/v1/provision", Some(&body))
        .await
        .map_err(|e| anyhow!("provisioning failed: {e}"))?;
    let checked = verify::answer(&answer, &pair, &trust)?;

    let files = output::write_files(&args.cert_dir, &checked, &pair, args.force)?;
    let config_yaml = output::agent_config_yaml(&checked.agent_id, &grpc_address, &files);
    if let Some(path) = &args.write_config {
        output::write_config(path, &config_yaml, args.force)?;
    }
    Ok(Provisioned {
        agent_id: checked.agent_id,
        files,
        config_yaml,
        not_after: checked.not_after,
    })
}
