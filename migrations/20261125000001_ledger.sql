-- The master's ledger (SPEC §6). Timestamps are RFC 3339 UTC text, so that
-- `sqlite3 master.db "select id, status, result from tasks"` reads well.

CREATE TABLE slaves (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    url           TEXT    NOT NULL,
    capacity      INTEGER NOT NULL CHECK (capacity >= 1),
    -- Registration order: dispatch asks slaves by ascending position (SPEC §5).
    position      INTEGER NOT NULL UNIQUE,
    state         TEXT    NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'draining')),
    registered_at TEXT    NOT NULL,
    last_seen_at  TEXT    NOT NULL
);

CREATE TABLE tasks (
    -- AUTOINCREMENT: an id is never reused, even after a refused submission's row is
    -- deleted, so a late report about an old id can never land on a new task.
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    expression   TEXT    NOT NULL,
    variables    TEXT    NOT NULL DEFAULT '{}', -- JSON object: name -> number
    delay_ms     INTEGER NOT NULL DEFAULT 0 CHECK (delay_ms BETWEEN 0 AND 600000),
    status       TEXT    NOT NULL
                 CHECK (status IN ('pending', 'in_progress', 'done', 'failed', 'cancelled')),
    slave_id     INTEGER REFERENCES slaves (id) ON DELETE SET NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    result       REAL,
    error        TEXT,
    submitted_at TEXT    NOT NULL,
    assigned_at  TEXT,
    finished_at  TEXT,
    -- Past this an in-progress task counts as lost on its slave (SPEC §7 task timeout).
    deadline_at  TEXT
);

-- Paging by status, and the dispatcher's "oldest pending first".
CREATE INDEX tasks_by_status ON tasks (status, id);
-- What a slave holds, for heartbeat reconciliation and re-dispatch; small by construction.
CREATE INDEX tasks_in_progress_by_slave ON tasks (slave_id) WHERE status = 'in_progress';

-- Append-only history of every state change.
CREATE TABLE task_events (
    id       INTEGER PRIMARY KEY,
    task_id  INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at       TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    slave_id INTEGER,
    detail   TEXT
);
CREATE INDEX task_events_by_task ON task_events (task_id, id);

-- Counts by status kept by triggers, so `GET /tasks` never counts a million rows.
CREATE TABLE task_counts (
    status TEXT    PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO task_counts (status, n)
VALUES ('pending', 0), ('in_progress', 0), ('done', 0), ('failed', 0), ('cancelled', 0);

CREATE TRIGGER task_counts_on_insert AFTER INSERT ON tasks BEGIN
    UPDATE task_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER task_counts_on_status AFTER UPDATE OF status ON tasks
WHEN OLD.status <> NEW.status BEGIN
    UPDATE task_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE task_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER task_counts_on_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1 WHERE status = OLD.status;
END;
