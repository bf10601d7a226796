-- Which run of a slave process holds each name (SPEC §8: one live process per name).
-- NULL for slaves registered before this migration or by a client that sends none.
ALTER TABLE slaves ADD COLUMN instance TEXT;

-- What `GET /healthz` writes: a counter that changes on every probe, so its commit
-- really reaches the WAL and the disk (an `UPDATE ... SET n = n` is skipped as a no-op
-- and proved nothing on a full or read-only disk).
CREATE TABLE ledger_health (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    probes   INTEGER NOT NULL,
    probed_at TEXT   NOT NULL
);
INSERT INTO ledger_health (id, probes, probed_at) VALUES (1, 0, '1970-01-01T00:00:00.000Z');
