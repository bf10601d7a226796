-- The masters that ran on this ledger (SPEC §11, `GET /masters`). On SQLite only one runs
-- at a time (a second cannot take the file's lock and is refused); the table says which
-- one, where, and since when. Rows unseen for a day are dropped when a master starts.
CREATE TABLE masters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    url          TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    stopped_at   TEXT
);
