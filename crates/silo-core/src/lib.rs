//! Pieces shared by every silo-proxy crate: agent-id rules, human durations,
//! configuration loading and tracing set-up.
//!
//! Nothing here does I/O beyond reading a config file and writing logs, so
//! the server, the agent and the CLI can all depend on it.
//!
//! # Layout
//! - [`id`]: agent-id validation, DNS-label check and the case-folded key.
//! - [`duration`]: `90d` / `12h` / `5m` / `30s` parsing, formatting and serde.
//! - [`config`]: YAML file + environment loader generic over the config
//!   struct, one-line errors, masked summary for the start-up log.
//! - [`logging`]: the `log:` section and `tracing` subscriber set-up.

pub mod config;
pub mod duration;
pub mod id;
pub mod logging;

/// Renders untrusted input for an error message: Debug-quoted (so control
/// characters and newlines cannot forge log lines) and capped so a huge
/// value cannot flood the log.
pub(crate) fn quoted(input: &str) -> String {
    const MAX_CHARS: usize = 80;
    match input.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &input[..cut]),
        None => format!("{input:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn quoted_escapes_and_caps() {
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
        let long = "x".repeat(200);
        let q = quoted(&long);
        assert!(q.len() < 90, "{q}");
        assert!(q.ends_with("..."));
        // Multi-byte characters must not be split.
        assert!(quoted(&"é".repeat(100)).ends_with("\"..."));
    }
}
