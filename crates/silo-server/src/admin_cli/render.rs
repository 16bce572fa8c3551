//! Human-readable output of the admin commands (`--json` prints the raw
//! answer instead).

use serde_json::Value;

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

pub(super) fn created_key(v: &Value) -> String {
    format!(
        "Provision key for agent {agent} (id {id}), valid until {exp}; shown only this once:\n  \
         {key}\n\
         CA SHA-256: {ca}\n\
         On the device, run:\n  \
         {cmd}\n",
        agent = s(v, "agent_id"),
        id = s(v, "id"),
        exp = s(v, "expires_at"),
        key = s(v, "key"),
        ca = s(v, "ca_sha256"),
        cmd = s(v, "command"),
    )
}

pub(super) fn keys(v: &Value) -> String {
    let rows = items(v, "keys")
        .iter()
        .map(|k| {
            [
                "id",
                "agent_id",
                "status",
                "created_at",
                "expires_at",
                "used_at",
            ]
            .iter()
            .map(|f| s(k, f).to_owned())
            .collect()
        })
        .collect::<Vec<_>>();
    if rows.is_empty() {
        return "no provision keys\n".into();
    }
    table(
        &["ID", "AGENT", "STATUS", "CREATED", "EXPIRES", "USED"],
        rows,
    )
}

pub(super) fn revoked_keys(v: &Value) -> String {
    format!(
        "{} ({})\n",
        s(v, "message"),
        v.get("revoked").unwrap_or(&Value::Null)
    )
}

pub(super) fn agents(v: &Value) -> String {
    let rows = items(v, "agents")
        .iter()
        .map(|a| {
            let port = a
                .get("port")
                .and_then(Value::as_u64)
                .map_or("-".into(), |p| p.to_string());
            vec![
                s(a, "agent_id").to_owned(),
                s(a, "status").to_owned(),
                port,
                s(a, "last_seen").to_owned(),
                s(a, "remote_addr").to_owned(),
                s(a, "cert_not_after").to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    if rows.is_empty() {
        return "no agents\n".into();
    }
    table(
        &[
            "AGENT",
            "STATUS",
            "PORT",
            "LAST SEEN",
            "REMOTE",
            "CERT EXPIRES",
        ],
        rows,
    )
}

pub(super) fn certificates(v: &Value) -> String {
    let rows = items(v, "certificates")
        .iter()
        .map(|c| {
            ["serial", "agent_id", "source", "not_after", "revoked_at"]
                .iter()
                .map(|f| s(c, f).to_owned())
                .collect()
        })
        .collect::<Vec<_>>();
    if rows.is_empty() {
        return "no certificates\n".into();
    }
    table(&["SERIAL", "AGENT", "SOURCE", "EXPIRES", "REVOKED"], rows)
}

pub(super) fn revoked_certs(v: &Value) -> String {
    let list = |key| {
        let names: Vec<&str> = items(v, key).iter().filter_map(Value::as_str).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    format!(
        "{}\n  revoked serials: {}\n  deleted files: {}\n",
        s(v, "message"),
        list("revoked_serials"),
        list("deleted_paths")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let out = table(&["A", "BB"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(out, "A    BB\nxyz  1\n");
        let v = serde_json::json!({"keys": [], "count": 0});
        assert_eq!(keys(&v), "no provision keys\n");
    }
}
