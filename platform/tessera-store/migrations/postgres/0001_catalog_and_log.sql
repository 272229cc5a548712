-- The catalog and the event log on PostgreSQL. Keep in step with ../sqlite.

CREATE TABLE principals (
    name         TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    roles        TEXT NOT NULL,
    domains      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE products (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    source       TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    changes      TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE events (
    position         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id       BIGINT NOT NULL REFERENCES products (id),
    stream           TEXT NOT NULL,
    stream_version   BIGINT NOT NULL,
    event_id         BYTEA NOT NULL,
    event_type       TEXT NOT NULL,
    schema_version   BIGINT NOT NULL,
    payload          TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    contract_version TEXT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    -- The writing transaction: readers only see rows below the oldest
    -- transaction still in flight (see tessera-store's log module).
    tx_id            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (product_id, stream, stream_version),
    UNIQUE (product_id, event_id)
);

CREATE INDEX events_by_product ON events (product_id, position);
