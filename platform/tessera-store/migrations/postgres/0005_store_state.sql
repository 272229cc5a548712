-- One-off work the store has done on itself, by name (e.g. `log_sealed`:
-- the events stored before sealing existed have been sealed in place).
CREATE TABLE store_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
