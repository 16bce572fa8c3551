//! Configuration loading shared by the server and the agent (config.md).
//!
//! The target is any serde struct with `#[serde(deny_unknown_fields,
//! default)]`. Sources, weakest first: the struct's `Default`, the YAML
//! file, the environment. The pipeline is plain `serde_json::Value`s:
//! read the YAML file, relax it the way viper would have, write environment
//! overrides into it, then deserialize once with the error path tracked so
//! every error names its dotted key.
//!
//! Defaults are merged in from the serialized `T::default()` rather than
//! left to serde, so a partly given section keeps the parent's defaults for
//! the rest; a filled default that collides with a `#[serde(alias)]` key of
//! the file is withdrawn and deserialization retried.

mod error;
mod mask;
mod overlay;

pub use error::ConfigError;
pub use mask::masked_summary;

use figment::providers::YamlExtended;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::io;
use std::path::{Path, PathBuf};

/// File names looked for in [`ConfigSource::search_dir`], in this order
/// (the Go implementation's viper searched the same two).
pub const DEFAULT_FILE_NAMES: [&str; 2] = ["application.yaml", "application.yml"];

/// Where a configuration comes from. Taking the environment as data keeps
/// tests free of process-global state.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Explicit `--config FILE`; must exist.
    pub file: Option<PathBuf>,
    /// Without `file`: the directory searched for [`DEFAULT_FILE_NAMES`].
    pub search_dir: Option<PathBuf>,
    /// Environment variables as `(name, value)`; later entries win.
    pub env: Vec<(String, String)>,
}

impl ConfigSource {
    /// What a binary wants: `--config FILE` if given, else the working
    /// directory, plus the process environment. Variables whose name or
    /// value is not UTF-8 are skipped (they cannot be config overrides, and
    /// `std::env::vars` would panic on them).
    pub fn for_process(file: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        ConfigSource {
            file,
            search_dir: Some(PathBuf::from(".")),
            env,
        }
    }
}

/// A loaded configuration and the file it came from (`None`: defaults and
/// environment only), for the start-up log.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    pub file: Option<PathBuf>,
}

/// Loads `T` from `src`: defaults, then the file, then the environment.
///
/// Validation of values (ranges, cross-field rules) is the caller's
/// `validate()`; this only guarantees every key is known and well-typed.
pub fn load<T>(src: &ConfigSource) -> Result<Loaded<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = serde_json::to_value(T::default()).map_err(|e| ConfigError::Rejected {
        key: "(defaults)".to_owned(),
        message: e.to_string(),
    })?;
    let file = resolve_file(src);
    let mut value = match &file {
        Some(path) => read_yaml(path)?,
        None => Value::Object(Map::new()),
    };
    overlay::relax_file(&mut value, &defaults);
    let filled = overlay::fill_defaults(&mut value, &defaults);
    let alternatives = overlay::apply_env(&mut value, &defaults, &src.env);
    let config = deserialize(value, filled, alternatives, file.as_deref())?;
    Ok(Loaded { config, file })
}

fn resolve_file(src: &ConfigSource) -> Option<PathBuf> {
    if let Some(file) = &src.file {
        return Some(file.clone());
    }
    let dir = src.search_dir.as_ref()?;
    DEFAULT_FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::FileNotFound {
            path: path.to_owned(),
        },
        _ => ConfigError::FileRead {
            path: path.to_owned(),
            source,
        },
    })?;
    // YamlExtended: `<<:` merge keys, which the Go YAML parser understood.
    let value: Value = YamlExtended::from_str(&text).map_err(|e| ConfigError::Yaml {
        path: path.to_owned(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    match value {
        // A file of comments only is an empty configuration.
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(value),
        _ => Err(ConfigError::NotAMapping {
            path: path.to_owned(),
        }),
    }
}

/// Deserializes `value`, retrying (each at most once) when serde rejects
/// something the loader added: a default filled next to the file's alias
/// for the same field, or a value whose type was guessed from the
/// environment and has another reading.
fn deserialize<T: DeserializeOwned>(
    mut value: Value,
    mut filled: Vec<Vec<String>>,
    mut alternatives: Vec<overlay::Alternative>,
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let message = err.inner().to_string();
        let segments = path_segments(err.path());
        if let Some(field) = duplicate_field(&message) {
            let mut candidate = segments.clone();
            candidate.push(field.to_owned());
            if let Some(index) = filled.iter().position(|f| *f == candidate) {
                overlay::remove_path(&mut value, &filled.swap_remove(index));
                continue;
            }
        }
        let retry = alternatives
            .iter()
            .position(|alt| segments.starts_with(&alt.segments));
        if let Some(index) = retry {
            let alt = alternatives.swap_remove(index);
            overlay::set_path(&mut value, &alt.segments, alt.value);
            continue;
        }
        let key = display_path(err.path());
        let offending = lookup(&value, err.path());
        return Err(ConfigError::from_serde(key, &message, offending, file));
    }
}

/// `x` from serde's "duplicate field `x`".
fn duplicate_field(message: &str) -> Option<&str> {
    message.strip_prefix("duplicate field `")?.split('`').next()
}

/// Map keys of a serde path (sequence indexes become their number).
fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Map { key } => key.clone(),
            Segment::Seq { index } => index.to_string(),
            Segment::Enum { variant } => variant.clone(),
            _ => "?".to_owned(),
        })
        .collect()
}

/// `http.trusted_proxies[1]`, with anything odd in file-supplied key names
/// escaped so it cannot break the one-line message.
fn display_path(path: &serde_path_to_error::Path) -> String {
    if path.iter().next().is_none() {
        return "(top level)".to_owned();
    }
    path.to_string().escape_debug().to_string()
}

fn lookup<'a>(value: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |node, segment| match segment {
        Segment::Map { key } => node.get(key.as_str()),
        Segment::Seq { index } => node.get(*index),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
