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

-- Work asked of a product's projector (rebuild, compact, vacuum), carried
-- out by whichever process holds its lease.
CREATE TABLE projection_commands (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id   BIGINT NOT NULL REFERENCES products (id),
    kind         TEXT NOT NULL,     -- 'rebuild', 'compact' or 'vacuum'
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    progress     BIGINT NOT NULL,   -- events done (a rebuild's events replayed)
    target       BIGINT NOT NULL,   -- events to do
    failed       BIGINT NOT NULL,   -- 1 if it ended in an error
    outcome      TEXT               -- JSON: what it did, or the error
);

CREATE INDEX projection_commands_pending ON projection_commands (product_id, finished_at);

-- Each major version of a contract is projected into tables of its own (a
-- generation, `v<major>`): 'building' while it catches up with the log,
-- then 'live'; the one it replaces is 'previous' (still readable) until
-- retired.
CREATE TABLE generations (
    product_id BIGINT NOT NULL REFERENCES products (id),
    major      BIGINT NOT NULL,
    state      TEXT NOT NULL,     -- 'building', 'live', 'previous' or 'retired'
    created_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (product_id, major)
);
