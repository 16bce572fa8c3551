//! Everything the loader does to the raw file value before serde sees it:
//! Go-compatible leniency for file values, and environment overrides.
//!
//! Both are driven by the serialized *defaults* of the target type: they
//! tell which key paths exist (so `HTTP_AGENT_PORT_RANGE_END` is found by
//! lookup, never by splitting on `_`) and which JSON type each leaf has (so
//! `"0123"` stays a string where a string is expected).

use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// A key path that exists in the defaults and is not itself a section.
pub(super) struct Leaf<'a> {
    pub segments: Vec<&'a str>,
    pub default: &'a Value,
}

impl Leaf<'_> {
    #[cfg(test)]
    fn path(&self) -> String {
        self.segments.join(".")
    }

    fn env_name(&self) -> String {
        self.segments.join("_").to_ascii_uppercase()
    }
}

/// Every leaf path of `defaults`: any non-object value, arrays and nulls
/// (`Option` fields that default to `None`) included.
pub(super) fn leaves(defaults: &Value) -> Vec<Leaf<'_>> {
    fn walk<'a>(prefix: &mut Vec<&'a str>, value: &'a Value, out: &mut Vec<Leaf<'a>>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                prefix.push(key);
                if child.is_object() {
                    walk(prefix, child, out);
                } else {
                    out.push(Leaf {
                        segments: prefix.clone(),
                        default: child,
                    });
                }
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), defaults, &mut out);
    out
}

/// A value the loader guessed the type of, with the other reading to try if
/// serde rejects the guess (an `Option<String>` set to `123` from the env).
pub(super) struct Alternative {
    pub segments: Vec<String>,
    pub value: Value,
}

/// Writes environment overrides into `target` (the file's value). The
/// `SILO_` form wins over the bare one; names matching no leaf are ignored.
pub(super) fn apply_env(
    target: &mut Value,
    defaults: &Value,
    env: &[(String, String)],
) -> Vec<Alternative> {
    // Later entries win, like repeated assignments in a shell.
    let env: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut alternatives = Vec::new();
    for leaf in leaves(defaults) {
        let name = leaf.env_name();
        let raw = env
            .get(format!("SILO_{name}").as_str())
            .or_else(|| env.get(name.as_str()));
        let Some(raw) = raw else { continue };
        let Some((value, alternative)) = env_value(raw, leaf.default) else {
            continue;
        };
        set_path(target, &leaf.segments, value);
        if let Some(value) = alternative {
            let segments = leaf.segments.iter().map(|s| s.to_string()).collect();
            alternatives.push(Alternative { segments, value });
        }
    }
    alternatives
}

/// Parses an environment value as the type of the default. Returns `None`
/// for an empty value where empty means nothing (a bool or a number:
/// `GRPC_PORT=` from an unset compose variable is "not set", as in viper).
fn env_value(raw: &str, default: &Value) -> Option<(Value, Option<Value>)> {
    match default {
        Value::Bool(_) | Value::Number(_) if raw.trim().is_empty() => None,
        Value::Null if raw.is_empty() => Some((Value::Null, None)),
        Value::Array(items) => {
            let parts = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
            match items.first() {
                Some(first) => Some((parts.map(|p| typed(p, first)).collect(), None)),
                // Unknown element type: strings first (CIDRs, names), then
                // numbers/bools if serde refuses strings.
                None => {
                    let strings: Vec<Value> = parts.clone().map(Value::from).collect();
                    let inferred: Vec<Value> = parts.map(infer).collect();
                    let alternative = (inferred != strings).then_some(Value::Array(inferred));
                    Some((Value::Array(strings), alternative))
                }
            }
        }
        Value::Null => {
            let value = infer(raw);
            let alternative = (!value.is_string()).then(|| Value::from(raw));
            Some((value, alternative))
        }
        _ => Some((typed(raw, default), None)),
    }
}

/// `raw` read as the JSON type of `like`; left a string when it does not
/// parse, so serde reports the value and the expected type.
fn typed(raw: &str, like: &Value) -> Value {
    let parsed = match like {
        Value::Bool(_) => parse_bool(raw).map(Value::Bool),
        Value::Number(n) => parse_number(raw, n.is_f64()).map(Value::Number),
        Value::String(_) => None,
        _ => return infer(raw),
    };
    parsed.unwrap_or_else(|| Value::from(raw))
}

/// For values without a typed default: `true`/`false`, then a number, else
/// the string itself.
fn infer(raw: &str) -> Value {
    if raw.eq_ignore_ascii_case("true") || raw.eq_ignore_ascii_case("false") {
        return Value::Bool(raw.eq_ignore_ascii_case("true"));
    }
    parse_number(raw, false)
        .or_else(|| parse_number(raw, true))
        .map_or_else(|| Value::from(raw), Value::Number)
}

/// The spellings Go's `strconv.ParseBool` accepts, for compatibility with
/// environments written for the original.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_number(raw: &str, float: bool) -> Option<Number> {
    let raw = raw.trim();
    if float {
        return raw.parse::<f64>().ok().and_then(Number::from_f64);
    }
    raw.parse::<i64>()
        .map(Number::from)
        .or_else(|_| raw.parse::<u64>().map(Number::from))
        .ok()
}

/// Sets `segments` in `target`, creating sections as needed. A non-mapping
/// in the way is left alone: serde will report it with its real path.
pub(super) fn set_path<S: AsRef<str>>(target: &mut Value, segments: &[S], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut node = target;
    for segment in parents {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map
            .entry(segment.as_ref())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert(last.as_ref().to_owned(), value);
    }
}

/// Copies every default the file does not set into it and returns the
/// paths it filled.
///
/// Serde's own `#[serde(default)]` would take a missing nested field from
/// the *nested* type's `Default`, which silently differs from the parent's
/// (`agent_port_range: {start: 7100}` would get `end: 0` from a derived
/// `Default`). Filling from the serialized top-level default avoids that.
pub(super) fn fill_defaults(file: &mut Value, defaults: &Value) -> Vec<Vec<String>> {
    fn walk(
        file: &mut Value,
        defaults: &Value,
        prefix: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        let (Value::Object(map), Value::Object(known)) = (file, defaults) else {
            return;
        };
        for (key, default) in known {
            prefix.push(key.clone());
            match map.get_mut(key) {
                Some(value) => walk(value, default, prefix, out),
                None => {
                    map.insert(key.clone(), default.clone());
                    out.push(prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(file, defaults, &mut Vec::new(), &mut out);
    out
}

/// Removes the key at `segments`, if present.
pub(super) fn remove_path(target: &mut Value, segments: &[String]) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let node = parents
        .iter()
        .try_fold(target, |node, segment| node.get_mut(segment.as_str()));
    if let Some(Value::Object(map)) = node {
        map.remove(last);
    }
}

/// Makes a file written for the Go implementation (viper + mapstructure)
/// load as it did there: keys are case-insensitive, an empty section
/// (`http:` with nothing under it) is an absent one, and scalars are
/// weakly typed (`port: "8080"`, `enabled: "true"`, `secret: 1234`).
pub(super) fn relax_file(file: &mut Value, defaults: &Value) {
    let (Value::Object(map), Value::Object(known)) = (file, defaults) else {
        return;
    };
    let folded: Vec<String> = map
        .keys()
        .filter(|k| !known.contains_key(*k))
        .filter(|k| {
            let lower = k.to_ascii_lowercase();
            known.contains_key(&lower) && !map.contains_key(&lower)
        })
        .cloned()
        .collect();
    for key in folded {
        if let Some(v) = map.remove(&key) {
            map.insert(key.to_ascii_lowercase(), v);
        }
    }
    map.retain(|key, value| !(value.is_null() && known.get(key).is_some_and(Value::is_object)));
    for (key, value) in map.iter_mut() {
        let Some(default) = known.get(key) else {
            continue;
        };
        match (default, &*value) {
            (Value::Object(_), _) => relax_file(value, default),
            (Value::Bool(_) | Value::Number(_), Value::String(s)) => *value = typed(s, default),
            (Value::String(_), Value::Number(_) | Value::Bool(_)) => {
                *value = Value::from(value.to_string());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_include_arrays_nulls_and_nested() {
        let d = json!({"a": {"b_c": {"d": 1}, "e": []}, "f": null, "g": {}});
        let mut paths: Vec<String> = leaves(&d).iter().map(Leaf::path).collect();
        paths.sort();
        assert_eq!(paths, ["a.b_c.d", "a.e", "f"]);
    }

    #[test]
    fn env_values_follow_default_types() {
        assert_eq!(typed("0123", &json!("x")), json!("0123"));
        assert_eq!(typed("0123", &json!(1)), json!(123));
        assert_eq!(typed("1.5", &json!(1.0)), json!(1.5));
        assert_eq!(typed("abc", &json!(1)), json!("abc"));
        assert_eq!(typed("T", &json!(false)), json!(true));
        assert_eq!(typed("yes", &json!(false)), json!("yes"));
        assert_eq!(env_value("", &json!(8080)), None);
        assert_eq!(env_value("", &json!(["a"])), Some((json!([]), None)));
        assert_eq!(env_value("", &json!(null)), Some((json!(null), None)));
        assert_eq!(
            env_value("7", &json!(null)),
            Some((json!(7), Some(json!("7"))))
        );
        assert_eq!(
            env_value("80, 443", &json!([])),
            Some((json!(["80", "443"]), Some(json!([80, 443]))))
        );
        assert_eq!(
            env_value("80,x", &json!([1])),
            Some((json!([80, "x"]), None))
        );
    }

    #[test]
    fn set_path_creates_sections_but_respects_bad_values() {
        let mut v = json!(null);
        set_path(&mut v, &["a", "b"], json!(1));
        assert_eq!(v, json!({"a": {"b": 1}}));
        let mut v = json!({"a": 5});
        set_path(&mut v, &["a", "b"], json!(1));
        assert_eq!(v, json!({"a": 5}));
    }

    #[test]
    fn fill_defaults_records_what_it_filled() {
        let defaults = json!({"a": {"b": 1, "c": 2}, "d": {"e": 3}, "f": null});
        let mut file = json!({"a": {"b": 5}, "x": 1});
        let filled = fill_defaults(&mut file, &defaults);
        assert_eq!(
            file,
            json!({"a": {"b": 5, "c": 2}, "d": {"e": 3}, "f": null, "x": 1})
        );
        assert_eq!(filled, [vec!["a", "c"], vec!["d"], vec!["f"]]);
        remove_path(&mut file, &["a".to_owned(), "c".to_owned()]);
        assert_eq!(file["a"], json!({"b": 5}));
    }

    #[test]
    fn relax_file_is_go_compatible() {
        let defaults = json!({"http": {"port": 1, "on": true, "key": "", "x": {"y": 1}}});
        let mut file = json!({"HTTP": {"Port": "8080", "on": "false", "key": 1234, "x": null}});
        relax_file(&mut file, &defaults);
        assert_eq!(
            file,
            json!({"http": {"port": 8080, "on": false, "key": "1234"}})
        );
    }
}
