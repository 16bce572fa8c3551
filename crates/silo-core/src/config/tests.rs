//! Loader tests against a small struct shaped like config.md's server keys.

use super::*;
use serde::Deserialize;
use std::fs;

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct TestConfig {
    http: Http,
    grpc: Grpc,
    db: Db,
    data_dir: String,
    public_url: Option<String>,
    max_peers: Option<u32>,
    #[serde(with = "crate::duration::serde_duration")]
    cert_validity: std::time::Duration,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Http {
    port: u16,
    admin_api_key: String,
    agent_port_range: PortRange,
    trusted_proxies: Vec<String>,
    extra_ports: Vec<u16>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            port: 8080,
            admin_api_key: String::new(),
            agent_port_range: PortRange {
                start: 8100,
                end: 8200,
            },
            trusted_proxies: Vec::new(),
            extra_ports: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct PortRange {
    start: u16,
    end: u16,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Grpc {
    tls: Tls,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Tls {
    enabled: bool,
    client_auth: ClientAuth,
    domain_names: String,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            enabled: true,
            client_auth: ClientAuth::Require,
            domain_names: "localhost".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum ClientAuth {
    #[default]
    Require,
    Request,
    None,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Db {
    url: String,
    #[serde(alias = "schema_name")]
    schema: String,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn from_env(pairs: &[(&str, &str)]) -> Result<TestConfig, ConfigError> {
    let src = ConfigSource {
        env: env(pairs),
        ..ConfigSource::default()
    };
    load::<TestConfig>(&src).map(|l| l.config)
}

/// Writes `yaml` as `name` in a fresh directory and loads it through
/// `search_dir`, with `pairs` as the environment.
fn from_file(
    name: &str,
    yaml: &str,
    pairs: &[(&str, &str)],
) -> Result<Loaded<TestConfig>, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(name), yaml).unwrap();
    let src = ConfigSource {
        file: None,
        search_dir: Some(dir.path().to_owned()),
        env: env(pairs),
    };
    load::<TestConfig>(&src)
}

#[test]
fn no_file_no_env_gives_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let src = ConfigSource {
        search_dir: Some(dir.path().to_owned()),
        ..ConfigSource::default()
    };
    let loaded = load::<TestConfig>(&src).unwrap();
    assert_eq!(loaded.config, TestConfig::default());
    assert_eq!(loaded.file, None);
}

#[test]
fn env_override_both_forms_silo_wins() {
    assert_eq!(from_env(&[("HTTP_PORT", "9000")]).unwrap().http.port, 9000);
    assert_eq!(
        from_env(&[("SILO_HTTP_PORT", "9001")]).unwrap().http.port,
        9001
    );
    let both = [("SILO_HTTP_PORT", "9001"), ("HTTP_PORT", "9000")];
    assert_eq!(from_env(&both).unwrap().http.port, 9001);
    let cfg = from_env(&[
        ("GRPC_TLS_ENABLED", "false"),
        ("GRPC_TLS_CLIENT_AUTH", "none"),
    ])
    .unwrap();
    assert!(!cfg.grpc.tls.enabled);
    assert_eq!(cfg.grpc.tls.client_auth, ClientAuth::None);
}

#[test]
fn env_names_with_underscores_in_keys_resolve() {
    let cfg = from_env(&[
        ("HTTP_AGENT_PORT_RANGE_END", "9300"),
        ("SILO_HTTP_AGENT_PORT_RANGE_START", "9200"),
        ("HTTP_ADMIN_API_KEY", "k"),
        ("DATA_DIR", "/var/lib/silo"),
    ])
    .unwrap();
    assert_eq!(cfg.http.agent_port_range.start, 9200);
    assert_eq!(cfg.http.agent_port_range.end, 9300);
    assert_eq!(cfg.http.admin_api_key, "k");
    assert_eq!(cfg.data_dir, "/var/lib/silo");
}

#[test]
fn unknown_env_ignored_and_strings_stay_strings() {
    let cfg = from_env(&[
        ("HTTP_PROT", "1"),
        ("HTTP", "x"),
        ("PATH", "/usr/bin"),
        ("http_port", "1"),
        ("HTTP_ADMIN_API_KEY", "0123"),
        ("GRPC_TLS_DOMAIN_NAMES", "true"),
    ])
    .unwrap();
    assert_eq!(cfg.http.port, 8080);
    assert_eq!(cfg.http.admin_api_key, "0123");
    assert_eq!(cfg.grpc.tls.domain_names, "true");
}

#[test]
fn env_for_optional_fields_infers_then_falls_back() {
    let cfg = from_env(&[("PUBLIC_URL", "12345"), ("MAX_PEERS", "7")]).unwrap();
    assert_eq!(cfg.public_url.as_deref(), Some("12345"));
    assert_eq!(cfg.max_peers, Some(7));
    let cfg = from_env(&[("PUBLIC_URL", "https://x"), ("MAX_PEERS", "")]).unwrap();
    assert_eq!(cfg.public_url.as_deref(), Some("https://x"));
    assert_eq!(cfg.max_peers, None);
}

#[test]
fn comma_list_to_array() {
    let cfg = from_env(&[
        ("HTTP_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.0/16"),
        ("HTTP_EXTRA_PORTS", "80,443"),
    ])
    .unwrap();
    assert_eq!(cfg.http.trusted_proxies, ["10.0.0.0/8", "192.168.0.0/16"]);
    assert_eq!(cfg.http.extra_ports, [80, 443]);
    let env = [("HTTP_TRUSTED_PROXIES", "")];
    let loaded = from_file("application.yaml", "http: {trusted_proxies: [a]}", &env).unwrap();
    assert!(loaded.config.http.trusted_proxies.is_empty());
}

#[test]
fn env_bad_type_names_key_value_and_allowed() {
    let err = from_env(&[("HTTP_PORT", "abc")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key http.port: invalid value \"abc\": expected an integer 0-65535"
    );
    let err = from_env(&[("HTTP_PORT", "70000")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key http.port: invalid value \"70000\": expected an integer 0-65535"
    );
    let err = from_env(&[("GRPC_TLS_ENABLED", "maybe")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key grpc.tls.enabled: invalid value \"maybe\": expected true or false"
    );
    let err = from_env(&[("GRPC_TLS_CLIENT_AUTH", "maybe")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key grpc.tls.client_auth: invalid value \"maybe\": \
         expected one of require, request, none"
    );
    let err = from_env(&[("CERT_VALIDITY", "5x")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("config key cert_validity: invalid value \"5x\""),
        "{err}"
    );
    let err = from_env(&[("HTTP_EXTRA_PORTS", "80,x")]).unwrap_err();
    assert_eq!(err.key(), Some("http.extra_ports[1]"), "{err}");
}

#[test]
fn file_then_env_precedence() {
    let yaml =
        "http:\n  port: 7000\n  agent_port_range:\n    start: 7100\ndb:\n  url: sqlite://x.db\n";
    let loaded = from_file("application.yaml", yaml, &[("SILO_HTTP_PORT", "7001")]).unwrap();
    let cfg = loaded.config;
    assert_eq!(cfg.http.port, 7001, "env beats file");
    assert_eq!(cfg.http.agent_port_range.start, 7100, "file beats default");
    assert_eq!(cfg.http.agent_port_range.end, 8200, "default where neither");
    assert_eq!(cfg.db.url, "sqlite://x.db");
    assert!(loaded.file.unwrap().ends_with("application.yaml"));
}

#[test]
fn yml_discovery_and_yaml_preferred() {
    let loaded = from_file("application.yml", "http: {port: 1234}", &[]).unwrap();
    assert_eq!(loaded.config.http.port, 1234);
    assert!(loaded.file.unwrap().ends_with("application.yml"));

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("application.yml"), "http: {port: 1}").unwrap();
    fs::write(dir.path().join("application.yaml"), "http: {port: 2}").unwrap();
    let src = ConfigSource {
        search_dir: Some(dir.path().to_owned()),
        ..ConfigSource::default()
    };
    assert_eq!(load::<TestConfig>(&src).unwrap().config.http.port, 2);
}

#[test]
fn unknown_file_key_is_error_with_dotted_path() {
    let err = from_file("application.yaml", "http:\n  prot: 1\n", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "http.prot"),
        "{msg}"
    );
    assert!(
        msg.starts_with("unknown configuration key \"http.prot\" in "),
        "{msg}"
    );
    assert!(msg.contains("application.yaml"), "{msg}");
    assert!(msg.contains("expected one of port, admin_api_key"), "{msg}");
    let err = from_file("application.yaml", "grpc: {tls: {enabld: true}}", &[]).unwrap_err();
    assert_eq!(err.key(), Some("grpc.tls.enabld"));
    let err = from_file("application.yaml", "nope: 1", &[]).unwrap_err();
    assert_eq!(err.key(), Some("nope"));
}

#[test]
fn bad_file_value_names_key() {
    let err = from_file("application.yaml", "http: {port: [1]}", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key http.port: invalid value \"[1]\": expected an integer 0-65535"
    );
    let err = from_file("application.yaml", "http: 5", &[]).unwrap_err();
    assert_eq!(err.key(), Some("http"), "{err}");
    assert!(
        err.to_string().ends_with("expected a mapping of keys"),
        "{err}"
    );
}

#[test]
fn go_style_files_load() {
    // viper was case-insensitive and weakly typed; empty sections are absent.
    let yaml = "\
HTTP:
  Port: \"9000\"
  admin_api_key: 123456
grpc:
  tls:
    enabled: \"false\"
db:
";
    let cfg = from_file("application.yaml", yaml, &[]).unwrap().config;
    assert_eq!(cfg.http.port, 9000);
    assert_eq!(cfg.http.admin_api_key, "123456");
    assert!(!cfg.grpc.tls.enabled);
    assert_eq!(cfg.db, Db::default());
}

#[test]
fn yaml_merge_keys_and_aliases_work() {
    let yaml = "\
db: &db
  schema_name: tenant
http:
  <<: {port: 1111}
  admin_api_key: k
";
    let cfg = from_file("application.yaml", yaml, &[]).unwrap().config;
    assert_eq!(cfg.db.schema, "tenant");
    assert_eq!(cfg.http.port, 1111);
}

#[test]
fn explicit_file_must_exist_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let src = ConfigSource {
        file: Some(missing.clone()),
        ..ConfigSource::default()
    };
    let err = load::<TestConfig>(&src).unwrap_err();
    assert!(matches!(err, ConfigError::FileNotFound { .. }));
    assert!(err.to_string().contains("nope.yaml"), "{err}");

    let bad = dir.path().join("bad.yaml");
    fs::write(&bad, "http:\n  port: 1\n bad indent: [\n").unwrap();
    let src = ConfigSource {
        file: Some(bad),
        ..ConfigSource::default()
    };
    let err = load::<TestConfig>(&src).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ConfigError::Yaml { line: Some(_), .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("invalid YAML in ") && msg.contains("bad.yaml") && msg.contains("line"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    let list = dir.path().join("list.yaml");
    fs::write(&list, "- a\n- b\n").unwrap();
    let src = ConfigSource {
        file: Some(list),
        ..ConfigSource::default()
    };
    assert!(matches!(
        load::<TestConfig>(&src),
        Err(ConfigError::NotAMapping { .. })
    ));

    let empty = dir.path().join("empty.yaml");
    fs::write(&empty, "# nothing yet\n").unwrap();
    let src = ConfigSource {
        file: Some(empty),
        ..ConfigSource::default()
    };
    assert_eq!(
        load::<TestConfig>(&src).unwrap().config,
        TestConfig::default()
    );
}

#[test]
fn masked_summary_hides_secrets() {
    let mut cfg = TestConfig::default();
    cfg.http.admin_api_key = "topsecret".into();
    cfg.db.url = "postgres://silo:pw123@db:5432/silo".into();
    let summary = masked_summary(&cfg, &["http.admin_api_key", "jwt.secret", "data_dir"]);
    assert!(!summary.contains('\n'));
    assert!(
        !summary.contains("topsecret") && !summary.contains("pw123"),
        "{summary}"
    );
    assert!(summary.contains(r#""admin_api_key":"***""#), "{summary}");
    assert!(
        summary.contains("postgres://silo:***@db:5432/silo"),
        "{summary}"
    );
    // Empty secrets stay visible as empty: "not set" is useful to see.
    assert!(summary.contains(r#""data_dir":"""#), "{summary}");
    assert!(summary.contains(r#""port":8080"#), "{summary}");
}
