-- The catalog and the event log on SQLite. Keep in step with ../postgres:
-- the same tables, columns and constraints; only the types differ.

CREATE TABLE principals (
    name         TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    roles        TEXT NOT NULL,   -- JSON array of role names
    domains      TEXT NOT NULL,   -- JSON array of domain names
    origin       TEXT NOT NULL,   -- 'config' or 'demo'
    created_at   BIGINT NOT NULL  -- microseconds since the Unix epoch
);

CREATE TABLE products (
    id              INTEGER PRIMARY KEY,
    domain          TEXT NOT NULL,
    name            TEXT NOT NULL,
    current_version TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    UNIQUE (domain, name)
);

CREATE TABLE contract_versions (
    product_id   BIGINT NOT NULL REFERENCES products (id),
    version      TEXT NOT NULL,
    major        BIGINT NOT NULL,
    source       TEXT NOT NULL,   -- the YAML exactly as published
    sha256       TEXT NOT NULL,
    changes      TEXT NOT NULL,   -- JSON array of the changes against the previous version
    published_at BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE events (
    position         INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id       BIGINT NOT NULL REFERENCES products (id),
    stream           TEXT NOT NULL,
    stream_version   BIGINT NOT NULL,
    event_id         BLOB NOT NULL,   -- 16 bytes, UUID (v7 when generated here)
    event_type       TEXT NOT NULL,
    schema_version   BIGINT NOT NULL,
    payload          TEXT NOT NULL,   -- JSON, as received; never rewritten
    metadata         TEXT NOT NULL,   -- JSON object
    contract_version TEXT NOT NULL,   -- the contract version the event was validated against
    recorded_at      BIGINT NOT NULL,
    UNIQUE (product_id, stream, stream_version),
    UNIQUE (product_id, event_id)
);

CREATE INDEX events_by_product ON events (product_id, position);
