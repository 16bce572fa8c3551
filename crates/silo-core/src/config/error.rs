//! [`ConfigError`] and the translation of serde's messages into the
//! one-line "key, value, what is allowed" form config.md asks for.

use serde_json::Value;
use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::quoted;

/// Why a configuration could not be loaded or validated. Every variant
/// displays as one line meant to be printed as the process's last words.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An explicit `--config FILE` that does not exist.
    #[error("config file {} not found", .path.display())]
    FileNotFound { path: PathBuf },

    /// The file exists but could not be read (permissions, not UTF-8, ...).
    #[error("cannot read config file {}: {source}", .path.display())]
    FileRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// YAML syntax error; `message` already carries line and column.
    #[error("invalid YAML in {}: {message}", .path.display())]
    Yaml {
        path: PathBuf,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        message: String,
    },

    /// The file parsed but is a list or a scalar instead of a mapping.
    #[error("config file {}: the top level must be a mapping of keys", .path.display())]
    NotAMapping { path: PathBuf },

    /// A key in the file that the configuration does not have (a typo, or a
    /// key of a newer version). `expected` lists the keys allowed there.
    #[error(
        "unknown configuration key {}{}{}",
        quoted(.key),
        in_file(.file.as_deref()),
        expected_suffix(.expected)
    )]
    UnknownKey {
        key: String,
        file: Option<PathBuf>,
        expected: String,
    },

    /// A value of the wrong type or outside what is allowed.
    #[error("config key {key}: invalid value {}: expected {allowed}", quoted(.value))]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },

    /// Anything serde reports that has no value/expectation to show
    /// (e.g. a duplicate key through an alias).
    #[error("config key {key}: {message}")]
    Rejected { key: String, message: String },
}

impl ConfigError {
    /// For `validate()` functions: `allowed` is what follows "expected",
    /// e.g. `ConfigError::invalid("grpc.tls.client_auth", "maybe",
    /// "one of require, request, none")`.
    pub fn invalid(key: &str, value: impl Display, allowed: impl Display) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    /// The dotted key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Rejected { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Maps a deserialization failure at `key` (whose offending value is
    /// `value`, when it can be found) to the matching variant.
    pub(super) fn from_serde(
        key: String,
        message: &str,
        value: Option<&Value>,
        file: Option<&Path>,
    ) -> Self {
        if message.starts_with("unknown field") {
            return ConfigError::UnknownKey {
                key,
                file: file.map(Path::to_path_buf),
                expected: expected_part(message).map(humanize).unwrap_or_default(),
            };
        }
        match (expected_part(message), value) {
            (Some(expected), Some(value)) => ConfigError::Invalid {
                key,
                value: match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                allowed: humanize(expected),
            },
            _ => ConfigError::Rejected {
                key,
                message: message.to_owned(),
            },
        }
    }
}

fn in_file(file: Option<&Path>) -> String {
    file.map(|f| format!(" in {}", f.display()))
        .unwrap_or_default()
}

fn expected_suffix(expected: &str) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(" (expected {expected})")
    }
}

/// The text after serde's last ", expected " — the last one, because the
/// offending value quoted earlier in the message may itself contain it.
fn expected_part(message: &str) -> Option<&str> {
    const MARK: &str = ", expected ";
    message.rfind(MARK).map(|i| &message[i + MARK.len()..])
}

/// Turns serde's Rust-flavoured expectations into operator language.
fn humanize(expected: &str) -> String {
    let e = expected.trim();
    let plain = match e {
        "u8" => "an integer 0-255",
        "u16" => "an integer 0-65535",
        "u32" => "an integer 0-4294967295",
        "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        _ if e.starts_with("struct ") => "a mapping of keys",
        _ => return e.replace('`', ""),
    };
    plain.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_constructor_formats_one_line() {
        let e = ConfigError::invalid(
            "grpc.tls.client_auth",
            "maybe",
            "one of require, request, none",
        );
        assert_eq!(
            e.to_string(),
            "config key grpc.tls.client_auth: invalid value \"maybe\": \
             expected one of require, request, none"
        );
        assert_eq!(e.key(), Some("grpc.tls.client_auth"));
        let e = ConfigError::invalid("http.port", "a\nb", "an integer");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn serde_messages_are_humanized() {
        let v = Value::from("abc");
        let e = ConfigError::from_serde(
            "http.port".into(),
            "invalid type: string \"abc\", expected u16",
            Some(&v),
            None,
        );
        assert_eq!(
            e.to_string(),
            "config key http.port: invalid value \"abc\": expected an integer 0-65535"
        );
        let v = Value::from("x, expected y");
        let e = ConfigError::from_serde(
            "a".into(),
            "invalid type: string \"x, expected y\", expected a boolean",
            Some(&v),
            None,
        );
        assert!(e.to_string().ends_with("expected true or false"), "{e}");
        let v = Value::from("maybe");
        let e = ConfigError::from_serde(
            "grpc.tls.client_auth".into(),
            "unknown variant `maybe`, expected one of `require`, `request`, `none`",
            Some(&v),
            None,
        );
        assert!(
            e.to_string()
                .ends_with("expected one of require, request, none"),
            "{e}"
        );
        let e = ConfigError::from_serde("x".into(), "duplicate field `y`", None, None);
        assert_eq!(e.to_string(), "config key x: duplicate field `y`");
    }
}
