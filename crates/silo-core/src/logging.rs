//! The `log:` configuration section and the `tracing` subscriber.
//!
//! Logs go to stderr so a CLI's stdout (keys, generated agent config) stays
//! clean for pipes.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// `log: {level: info, format: text}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn` or `error` (any case).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Human-readable lines or one JSON object per line (for log shippers).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogConfig {
    /// Rejects unknown levels with a `log.level` error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if LEVELS.contains(&self.level.to_ascii_lowercase().as_str()) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                "log.level",
                &self.level,
                format_args!("one of {}", LEVELS.join(", ")),
            ))
        }
    }

    /// `RUST_LOG` when set and parseable (fine-grained debugging without a
    /// config change), else the configured level.
    fn filter(&self) -> EnvFilter {
        let fallback = || EnvFilter::new(self.level.to_ascii_lowercase());
        match std::env::var("RUST_LOG") {
            Ok(directives) if !directives.trim().is_empty() => {
                EnvFilter::try_new(directives).unwrap_or_else(|_| fallback())
            }
            _ => fallback(),
        }
    }
}

/// Installs the global subscriber. A second call (tests, or a library user
/// with its own subscriber) is a no-op rather than a panic.
pub fn init_tracing(cfg: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(cfg.filter());
    // Ignored on purpose: the only error is "already initialised".
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        let cfg = LogConfig::default();
        assert_eq!(cfg.level, "info");
        assert_eq!(cfg.format, LogFormat::Text);
        let cfg: LogConfig = serde_json::from_str(r#"{"format":"json"}"#).unwrap();
        assert_eq!(
            cfg,
            LogConfig {
                level: "info".into(),
                format: LogFormat::Json
            }
        );
        assert!(serde_json::from_str::<LogConfig>(r#"{"lvl":"x"}"#).is_err());
        assert!(serde_json::from_str::<LogConfig>(r#"{"format":"xml"}"#).is_err());
    }

    #[test]
    fn validate_levels() {
        for level in ["trace", "debug", "info", "warn", "error", "WARN"] {
            let cfg = LogConfig {
                level: level.into(),
                ..LogConfig::default()
            };
            assert!(cfg.validate().is_ok(), "{level}");
        }
        let cfg = LogConfig {
            level: "verbose".into(),
            ..LogConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "config key log.level: invalid value \"verbose\": \
             expected one of trace, debug, info, warn, error"
        );
    }

    #[test]
    fn init_twice_is_harmless() {
        init_tracing(&LogConfig::default());
        init_tracing(&LogConfig {
            format: LogFormat::Json,
            ..LogConfig::default()
        });
        tracing::info!("still alive");
    }
}
