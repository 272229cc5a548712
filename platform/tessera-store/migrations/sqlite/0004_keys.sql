-- Crypto-shredding: one data key per data subject and domain, stored only
-- wrapped under the key-encryption key (which lives outside this database),
-- and the ledger of forgotten subjects. Keep in step with ../postgres.
CREATE TABLE data_keys (
    id         INTEGER PRIMARY KEY, -- random; named by every token it seals
    domain     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    wrapped    BLOB NOT NULL,   -- nonce || AES-256-GCM(data key) || tag, bound to (id, domain, subject)
    kek        TEXT NOT NULL,   -- fingerprint of the key-encryption key that wrapped it
    created_at BIGINT NOT NULL, -- microseconds since the Unix epoch
    UNIQUE (domain, subject)
);

-- Who was forgotten, when, by whom and why: no personal data beyond the
-- subject's identifier. Re-applied at start, so that a key restored from a
-- backup is destroyed again.
CREATE TABLE forgotten_subjects (
    domain        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    forgotten_at  BIGINT NOT NULL,
    forgotten_by  TEXT NOT NULL,
    reason        TEXT NOT NULL,
    readmitted_at BIGINT,          -- set when a steward lets the subject back in (with a new key)
    readmitted_by TEXT,
    PRIMARY KEY (domain, subject)
);
