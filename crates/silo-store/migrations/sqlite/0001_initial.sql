-- Initial schema (SQLite). Timestamps are INTEGER unix milliseconds (UTC) so
-- that both backends store and compare exactly the same values.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('Admin', 'User')),
    created_at    INTEGER NOT NULL
);

CREATE TABLE provision_keys (
    id                        TEXT    PRIMARY KEY,
    agent_id                  TEXT    NOT NULL,
    key_hash                  TEXT    NOT NULL UNIQUE,
    created_at                INTEGER NOT NULL,
    expires_at                INTEGER NOT NULL,
    used_at                   INTEGER,
    revoked_at                INTEGER,
    consumed_by_pubkey_sha256 TEXT,
    issued_cert_serial        TEXT,
    created_by                TEXT    NOT NULL
);
CREATE INDEX provision_keys_agent_idx ON provision_keys (agent_id);

CREATE TABLE certificates (
    serial     TEXT    PRIMARY KEY,
    agent_id   TEXT    NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    pem        TEXT    NOT NULL,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX certificates_agent_idx ON certificates (agent_id, not_before);

CREATE TABLE agent_revocations (
    agent_id       TEXT    PRIMARY KEY,
    revoked_before INTEGER NOT NULL
);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    agent_id    TEXT,
    remote_addr TEXT,
    detail      TEXT    NOT NULL
);
CREATE INDEX audit_events_agent_idx ON audit_events (agent_id, id);

CREATE TABLE agents (
    agent_id         TEXT    PRIMARY KEY,
    agent_key        TEXT    NOT NULL UNIQUE,
    port             INTEGER UNIQUE CHECK (port BETWEEN 1 AND 65535),
    first_seen       INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    protocol         TEXT    NOT NULL,
    last_remote_addr TEXT
);
