//! The one-line effective configuration logged at start-up, with secrets
//! masked so the log can be shared in a bug report.

use serde::Serialize;
use serde_json::Value;

const MASK: &str = "***";

/// Compact JSON of `cfg` on one line. Each dotted key in `secret_keys` is
/// shown as `"***"` unless it is empty (so "not set, will be generated" is
/// still visible); URL passwords (`postgres://user:pw@host`) and
/// `password=` parameters are masked in every string, whatever the key.
pub fn masked_summary<T: Serialize>(cfg: &T, secret_keys: &[&str]) -> String {
    let mut value = match serde_json::to_value(cfg) {
        Ok(value) => value,
        Err(e) => return format!("<configuration not serializable: {e}>"),
    };
    for key in secret_keys {
        if let Some(slot) = lookup_mut(&mut value, key) {
            let empty = match slot {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if !empty {
                *slot = Value::from(MASK);
            }
        }
    }
    mask_strings(&mut value);
    // JSON escaping keeps newlines in values from splitting the log line.
    value.to_string()
}

fn lookup_mut<'a>(value: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    dotted
        .split('.')
        .try_fold(value, |node, segment| node.get_mut(segment))
}

fn mask_strings(value: &mut Value) {
    match value {
        Value::String(s) => {
            let masked = mask_password_params(&mask_url_passwords(s));
            if masked != *s {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_strings),
        Value::Object(map) => map.values_mut().for_each(mask_strings),
        _ => {}
    }
}

/// Replaces the password of every `scheme://user:password@host` in `s`.
///
/// Errs on the side of masking: the user-info is taken up to the *last*
/// `@` before whitespace or the next `://`, because hand-written URLs carry
/// unescaped `/`, `@` or `#` in passwords.
pub(super) fn mask_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, after) = rest.split_at(i + 3);
        out.push_str(head);
        let end = [after.find(char::is_whitespace), after.find("://")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(after.len());
        let region = &after[..end];
        rest = after;
        if let Some(at) = region.rfind('@')
            && let Some(colon) = region[..at].find(':')
        {
            out.push_str(&region[..=colon]);
            out.push_str(MASK);
            rest = &after[at..];
        }
    }
    out.push_str(rest);
    out
}

/// Masks `password=...` (any case, also `sslpassword=`) as in libpq
/// connection strings and URL query parameters.
pub(super) fn mask_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    // ASCII lowercasing keeps byte offsets identical to `s`.
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(KEY) {
        let value_start = pos + found + KEY.len();
        let value_end = s[value_start..]
            .find(|c: char| c == '&' || c == ';' || c.is_whitespace())
            .map_or(s.len(), |n| value_start + n);
        out.push_str(&s[pos..value_start]);
        if value_end > value_start {
            out.push_str(MASK);
        }
        pos = value_end;
    }
    out.push_str(&s[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        let cases = [
            ("postgres://user:pw@host/db", "postgres://user:***@host/db"),
            ("postgres://user@host/db", "postgres://user@host/db"),
            ("https://example.com:8443/x", "https://example.com:8443/x"),
            ("postgres://u:p/w@d@h:5432/db", "postgres://u:***@h:5432/db"),
            ("a://u:p@h,b://v:q@i", "a://u:***@h,b://v:***@i"),
            ("x postgres://u:p@h y", "x postgres://u:***@h y"),
            ("no url here", "no url here"),
            ("://:@", "://:***@"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_url_passwords(input), want, "{input}");
        }
    }

    #[test]
    fn password_params_are_masked() {
        assert_eq!(
            mask_password_params("host=h Password=secret dbname=x"),
            "host=h Password=*** dbname=x"
        );
        assert_eq!(
            mask_password_params("postgres://h/db?sslpassword=s&x=1"),
            "postgres://h/db?sslpassword=***&x=1"
        );
        assert_eq!(mask_password_params("password="), "password=");
    }
}
