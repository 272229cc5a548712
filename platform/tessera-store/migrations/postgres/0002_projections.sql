-- What the projector keeps beside its Delta tables. Keep in step with
-- ../sqlite. The applied log position of a table is not here: it lives in
-- the table's own Delta log (the txn action), atomically with its data.

-- Events that could not be projected into a table, and why; recorded once
-- per (table, event) however often a run is retried.
CREATE TABLE dead_letters (
    product_id  BIGINT NOT NULL REFERENCES products (id),
    major       BIGINT NOT NULL,   -- the generation (contract major version)
    table_name  TEXT NOT NULL,
    position    BIGINT NOT NULL,
    stream      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (product_id, major, table_name, position)
);

-- The latest result of each quality check of each table.
CREATE TABLE quality_results (
    product_id    BIGINT NOT NULL REFERENCES products (id),
    major         BIGINT NOT NULL,
    table_name    TEXT NOT NULL,
    check_name    TEXT NOT NULL,   -- e.g. 'unique(order_id)'
    passed        BIGINT NOT NULL, -- 1 or 0
    detail        TEXT NOT NULL,   -- what was measured
    table_version BIGINT NOT NULL, -- the Delta version checked
    checked_at    BIGINT NOT NULL,
    PRIMARY KEY (product_id, major, table_name, check_name)
);

-- Who runs what: one holder per name (e.g. the projector of a product) at
-- a time, until it stops renewing.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL    -- microseconds since the Unix epoch
);
