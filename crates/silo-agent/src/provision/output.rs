//! The files `provision` leaves behind, in the original layout:
//! `<cert-dir>/agents/<id>/<id>-cert.pem`, `<id>-key.pem` (0600, generated
//! on the device) and `<cert-dir>/ca/ca-cert.pem`; directories 0700, every
//! file written atomically. And the agent configuration that uses them.

use super::verify::Checked;
use anyhow::{Context, anyhow, bail};
use silo_pki::KeyPair;
use std::path::{Path, PathBuf};

/// Where the files went (absolute paths).
#[derive(Debug, Clone)]
pub struct Files {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// The port the tunnel listens on by default (`grpc.port`).
const DEFAULT_GRPC_PORT: u16 = 9090;

/// `<host of the --server URL>:9090`.
pub fn default_grpc_address(server: &silo_client::Url) -> anyhow::Result<String> {
    let host = server
        .host_str()
        .ok_or_else(|| anyhow!("--server has no host"))?;
    Ok(format!("{host}:{DEFAULT_GRPC_PORT}"))
}

/// `--grpc-address` must be `host:port`.
pub fn check_grpc_address(addr: &str) -> anyhow::Result<String> {
    let addr = addr.trim();
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        bail!("--grpc-address {addr:?}: expected host:port such as tunnel.example.com:9090");
    }
    Ok(addr.to_owned())
}

/// Refuses, before the key is spent, what would fail afterwards: an agent
/// key already in the certificate directory (without `--force`), an
/// existing configuration file, a directory that cannot be created.
pub fn check_targets(
    cert_dir: &Path,
    write_config: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    if !force {
        if let Some(existing) = existing_agent_key(cert_dir)? {
            bail!(
                "{} already exists; pass --force to replace this device's key, or use another --cert-dir",
                existing.display()
            );
        }
        if let Some(path) = write_config.filter(|p| p.exists()) {
            bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            );
        }
    }
    silo_pki::files::create_private_dir_all(cert_dir)
        .with_context(|| format!("cannot use --cert-dir {}", cert_dir.display()))?;
    Ok(())
}

/// The first `<cert-dir>/agents/*/*-key.pem`, if any: the device does not
/// know its agent id before provisioning, so any agent key there counts.
fn existing_agent_key(cert_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let agents = cert_dir.join("agents");
    let dirs = match std::fs::read_dir(&agents) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", agents.display())),
    };
    for dir in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            if file.file_name().to_string_lossy().ends_with("-key.pem") {
                return Ok(Some(file.path()));
            }
        }
    }
    Ok(None)
}

/// Writes key (0600), certificate and CA atomically, the key first.
pub fn write_files(
    cert_dir: &Path,
    checked: &Checked,
    pair: &KeyPair,
    force: bool,
) -> anyhow::Result<Files> {
    let cert_dir = std::path::absolute(cert_dir)
        .with_context(|| format!("cannot resolve {}", cert_dir.display()))?;
    // The id comes from the verified certificate and is a valid agent id:
    // one safe path component.
    let id = &checked.agent_id;
    let agent_dir = cert_dir.join("agents").join(id);
    let files = Files {
        cert_file: agent_dir.join(format!("{id}-cert.pem")),
        key_file: agent_dir.join(format!("{id}-key.pem")),
        ca_file: cert_dir.join("ca").join("ca-cert.pem"),
    };
    if files.key_file.exists() && !force {
        bail!(
            "{} appeared while provisioning; pass --force to replace it",
            files.key_file.display()
        );
    }
    let write = |path: &Path, bytes: &[u8], private: bool| {
        let r = if private {
            silo_pki::write_private_file(path, bytes)
        } else {
            silo_pki::write_public_file(path, bytes)
        };
        r.with_context(|| format!("writing {}", path.display()))
    };
    write(&files.key_file, pair.serialize_pem().as_bytes(), true)?;
    write(&files.cert_file, checked.cert_pem.as_bytes(), false)?;
    write(&files.ca_file, checked.ca_pem.as_bytes(), false)?;
    Ok(files)
}

/// A YAML string scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The agent configuration that runs with the new certificate.
pub fn agent_config_yaml(agent_id: &str, grpc_address: &str, files: &Files) -> String {
    let path = |p: &Path| yaml_str(&p.display().to_string());
    format!(
        "# silo-proxy-agent configuration written by `silo-proxy-agent provision`\n\
         grpc:\n  \
           server_address: {addr}\n  \
           agent_id: {id}\n  \
           tls:\n    \
             enabled: true\n    \
             cert_file: {cert}\n    \
             key_file: {key}\n    \
             ca_file: {ca}\n\
         local:\n  \
           service_url: \"http://localhost:3000\"   # the local service to expose\n",
        addr = yaml_str(grpc_address),
        id = yaml_str(agent_id),
        cert = path(&files.cert_file),
        key = path(&files.key_file),
        ca = path(&files.ca_file),
    )
}

/// `--write-config FILE` (not secret: it only names the files).
pub fn write_config(path: &Path, yaml: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    silo_pki::write_public_file(path, yaml.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_addresses() {
        let url = silo_client::Url::parse("https://tunnel.example.com:8080/").unwrap();
        assert_eq!(
            default_grpc_address(&url).unwrap(),
            "tunnel.example.com:9090"
        );
        let url = silo_client::Url::parse("https://[::1]:8080/").unwrap();
        assert_eq!(default_grpc_address(&url).unwrap(), "[::1]:9090");
        assert_eq!(check_grpc_address(" h:1 ").unwrap(), "h:1");
        for bad in ["h", ":9", "h:0", "h:x", "h:70000"] {
            assert!(check_grpc_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_loads_as_an_agent_config() {
        let files = Files {
            cert_file: "/c/agents/a/a-cert.pem".into(),
            key_file: "/c/agents/a/a-key.pem".into(),
            ca_file: "/c/ca/ca-cert.pem".into(),
        };
        let yaml = agent_config_yaml("a", "h:9090", &files);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let loaded = silo_core::config::load::<crate::config::AgentConfig>(
            &silo_core::config::ConfigSource {
                file: Some(path),
                ..Default::default()
            },
        )
        .unwrap()
        .config;
        assert_eq!(loaded.grpc.agent_id, "a");
        assert_eq!(loaded.grpc.server_address, "h:9090");
        assert!(loaded.grpc.tls.enabled);
        assert_eq!(loaded.grpc.tls.key_file, "/c/agents/a/a-key.pem");
    }

    #[test]
    fn an_existing_key_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        check_targets(dir.path(), None, false).unwrap();
        let key = dir.path().join("agents/x/x-key.pem");
        silo_pki::write_private_file(&key, b"k").unwrap();
        let e = check_targets(dir.path(), None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x-key.pem") && e.contains("--force"), "{e}");
        check_targets(dir.path(), None, true).unwrap();
    }
}
