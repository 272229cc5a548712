-- Notices: what happened to a domain's data that others must hear of (a
-- subject forgotten or re-admitted), written in the same transaction as
-- the change itself: the catalog reads them, and integration events are
-- published from them (a transactional outbox). Keep in step with ../sqlite.
CREATE TABLE notices (
    id          BIGSERIAL PRIMARY KEY, -- the order notices happened in; never reused
    kind        TEXT NOT NULL,         -- SubjectForgotten, SubjectReadmitted
    domain      TEXT NOT NULL,
    body        TEXT NOT NULL,         -- JSON: no personal data beyond a subject's identifier
    recorded_at BIGINT NOT NULL        -- microseconds since the Unix epoch
);
CREATE INDEX notices_by_domain ON notices (domain, id);
