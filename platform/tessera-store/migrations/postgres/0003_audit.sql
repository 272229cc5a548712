-- Every SQL query, whoever asked and however (HTTP, the PostgreSQL
-- protocol, the catalog's sample rows). Keep in step with ../sqlite.
CREATE TABLE query_audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,  -- microseconds since the Unix epoch, when the query started
    principal   TEXT NOT NULL,
    via         TEXT NOT NULL,    -- 'http', 'pgwire', 'catalog'
    sql_text    TEXT NOT NULL,
    tables_read TEXT NOT NULL,    -- JSON array of `domain.product.table`
    row_count   BIGINT NOT NULL,  -- rows returned
    duration_us BIGINT NOT NULL,
    outcome     TEXT NOT NULL,    -- 'ok', 'refused', 'failed', 'cancelled'
    error       TEXT              -- the message the caller got
);

CREATE INDEX query_audit_at ON query_audit (at);
CREATE INDEX query_audit_principal ON query_audit (principal, at);
