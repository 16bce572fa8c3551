//! Agent ids: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$` (compatible with the Go
//! implementation).
//!
//! Ids end up in file paths (`<cert-dir>/agents/<id>/`), certificate CNs,
//! host names (`{agent}.{base_domain}`) and log lines, which is why the
//! alphabet is this small: no `/`, `.`, whitespace or control characters can
//! ever get through.

use thiserror::Error;

/// Longest accepted id, in bytes (all accepted characters are ASCII).
pub const MAX_AGENT_ID_LEN: usize = 64;

/// Longest DNS label (RFC 1035).
const MAX_DNS_LABEL_LEN: usize = 63;

/// An agent id that does not match the allowed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid agent id {}: must be 1-64 characters of letters, digits, '-' or '_', \
     starting with a letter or digit",
    crate::quoted(.input)
)]
pub struct InvalidAgentId {
    input: String,
}

/// Checks `id` against `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
pub fn validate_agent_id(id: &str) -> Result<(), InvalidAgentId> {
    let bytes = id.as_bytes();
    let valid = match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_AGENT_ID_LEN
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        // Keep only a bounded prefix: the input may be attacker-sized.
        let input: String = id.chars().take(MAX_AGENT_ID_LEN * 2).collect();
        Err(InvalidAgentId { input })
    }
}

/// True when `id` is a valid agent id that can also be used as a DNS label,
/// i.e. in host routing as `{id}.{base_domain}`: no `_`, no trailing `-`,
/// at most 63 characters.
pub fn is_dns_label(id: &str) -> bool {
    validate_agent_id(id).is_ok()
        && id.len() <= MAX_DNS_LABEL_LEN
        && !id.contains('_')
        && !id.ends_with('-')
}

/// The key under which ids are unique: ASCII-lowercased, so `Edge-1` and
/// `edge-1` collide (they would be the same host name and, on some file
/// systems, the same directory).
pub fn normalize_agent_id(id: &str) -> String {
    id.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let ok = [
            "a",
            "A",
            "0",
            "agent-1",
            "edge_01",
            "a-",
            "a_",
            "x".repeat(64).as_str(),
        ]
        .map(str::to_owned);
        for id in &ok {
            assert!(validate_agent_id(id).is_ok(), "{id:?} should be valid");
        }
        let bad = [
            "",
            "../x",
            "a/b",
            "a.b",
            "-a",
            "_a",
            "a b",
            " a",
            "a\0",
            "é",
            "a\n",
            &"x".repeat(65),
        ];
        for id in bad {
            assert!(validate_agent_id(id).is_err(), "{id:?} should be invalid");
        }
    }

    #[test]
    fn message_is_clear_and_escaped() {
        let err = validate_agent_id("../x").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid agent id \"../x\": must be 1-64 characters of letters, digits, \
             '-' or '_', starting with a letter or digit"
        );
        let err = validate_agent_id("a\nFAKE LOG LINE")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'));
        let err = validate_agent_id(&"/".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 250, "{}", err.len());
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("edge-1"));
        assert!(is_dns_label("Edge1"));
        assert!(is_dns_label(&"x".repeat(63)));
        assert!(!is_dns_label(&"x".repeat(64)));
        assert!(!is_dns_label("edge_1"));
        assert!(!is_dns_label("edge-"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn normalization_folds_case_only() {
        assert_eq!(normalize_agent_id("Edge-01_A"), "edge-01_a");
        assert_eq!(normalize_agent_id("edge"), normalize_agent_id("EDGE"));
    }

    proptest! {
        #[test]
        fn forbidden_characters_never_valid(
            prefix in "[A-Za-z0-9_-]{0,10}",
            bad in prop::sample::select(vec!['/', '.', ' ', '\t', '\n', '\r', '\0', '\\', ':']),
            suffix in "[A-Za-z0-9_-]{0,10}",
        ) {
            let id = format!("{prefix}{bad}{suffix}");
            prop_assert!(validate_agent_id(&id).is_err());
        }

        #[test]
        fn valid_ids_are_short_ascii_and_path_safe(id in "\\PC{0,80}") {
            if validate_agent_id(&id).is_ok() {
                prop_assert!(id.len() <= MAX_AGENT_ID_LEN);
                prop_assert!(id.is_ascii());
                prop_assert!(!id.contains(['/', '.', '\0']) && !id.contains(char::is_whitespace));
            }
        }

        #[test]
        fn pattern_matches_are_accepted(id in "[A-Za-z0-9][A-Za-z0-9_-]{0,63}") {
            prop_assert!(validate_agent_id(&id).is_ok());
            // Normalizing never turns a valid id into an invalid one.
            prop_assert!(validate_agent_id(&normalize_agent_id(&id)).is_ok());
        }

        #[test]
        fn dns_labels_are_valid_ids(id in "[A-Za-z0-9_-]{0,70}") {
            if is_dns_label(&id) {
                prop_assert!(validate_agent_id(&id).is_ok());
                prop_assert!(id.len() <= 63 && !id.contains('_') && !id.ends_with('-'));
            }
        }
    }
}
