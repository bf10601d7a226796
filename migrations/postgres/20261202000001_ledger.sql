-- The master's ledger on PostgreSQL (SPEC §6, §11): the same tables, states and events
-- as the SQLite ledger in ../, shaped for several masters sharing one database.
-- - Ids come from identity sequences: never reused, whichever master asks.
-- - Timestamps are timestamptz from the database's clock (`now()`), the one clock all
--   masters share; `rfc3339()` shows them as the API does.
-- - Counts by status are kept by triggers in 16 shards per status, so concurrent
--   writers do not all queue on one row.

-- RFC 3339 UTC with milliseconds, as the API and the SQLite ledger write them.
CREATE FUNCTION rfc3339(at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

CREATE TABLE slaves (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL UNIQUE,
    url           text        NOT NULL,
    capacity      bigint      NOT NULL CHECK (capacity >= 1),
    -- Registration order: dispatch asks slaves by ascending position (SPEC §5). From a
    -- sequence, so two masters registering at once never pick the same place.
    position      bigint      NOT NULL UNIQUE,
    state         text        NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'draining')),
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    -- Which run of a slave process holds the name (SPEC §8: one live process per name).
    instance      text
);
CREATE SEQUENCE slave_positions AS bigint OWNED BY slaves.position;

CREATE TABLE tasks (
    id           bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    expression   text             NOT NULL,
    variables    text             NOT NULL DEFAULT '{}', -- JSON object: name -> number
    delay_ms     bigint           NOT NULL DEFAULT 0 CHECK (delay_ms BETWEEN 0 AND 600000),
    status       text             NOT NULL
                 CHECK (status IN ('pending', 'in_progress', 'done', 'failed', 'cancelled')),
    slave_id     bigint           REFERENCES slaves (id) ON DELETE SET NULL,
    attempts     bigint           NOT NULL DEFAULT 0,
    result       double precision,
    error        text,
    submitted_at timestamptz      NOT NULL DEFAULT now(),
    assigned_at  timestamptz,
    finished_at  timestamptz,
    -- For people: the master keeps the deadline that counts on its monotonic clock.
    deadline_at  timestamptz
);
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_in_progress_by_slave ON tasks (slave_id) WHERE status = 'in_progress';

-- Append-only history of every state change.
CREATE TABLE task_events (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id  bigint      NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text        NOT NULL,
    slave_id bigint,
    detail   text
);
CREATE INDEX task_events_by_task ON task_events (task_id, id);

CREATE TABLE task_counts (
    status text     NOT NULL,
    shard  smallint NOT NULL,
    n      bigint   NOT NULL,
    PRIMARY KEY (status, shard)
);
INSERT INTO task_counts (status, shard, n)
SELECT status, shard, 0
  FROM unnest(ARRAY['pending', 'in_progress', 'done', 'failed', 'cancelled']) AS status,
       generate_series(0, 15) AS shard;

-- A task's two counter rows are in its own shard (id % 16) and are always locked in
-- the order of their status text, so two transactions can never wait on each other.
CREATE FUNCTION task_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s smallint := (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END) % 16;
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = s;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE task_counts SET n = n - 1 WHERE status = OLD.status AND shard = s;
    ELSIF OLD.status < NEW.status THEN
        UPDATE task_counts SET n = n - 1 WHERE status = OLD.status AND shard = s;
        UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = s;
    ELSE
        UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = s;
        UPDATE task_counts SET n = n - 1 WHERE status = OLD.status AND shard = s;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_counts_on_insert_or_delete AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_follow();
CREATE TRIGGER task_counts_on_status AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status <> NEW.status) EXECUTE FUNCTION task_counts_follow();

-- The two events every task has, written by the statement that makes the change (as on
-- SQLite). The rarer ones carry a reason and are written beside their change.
CREATE FUNCTION task_events_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_id, at, kind, slave_id)
        VALUES (NEW.id, NEW.submitted_at, 'submitted', NEW.slave_id);
    ELSE
        INSERT INTO task_events (task_id, at, kind, slave_id, detail)
        VALUES (NEW.id, NEW.finished_at, NEW.status, NEW.slave_id, NEW.error);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_on_submit AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_events_follow();
CREATE TRIGGER task_events_on_finish AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (NEW.status IN ('done', 'failed') AND OLD.status <> NEW.status)
    EXECUTE FUNCTION task_events_follow();

-- What `GET /healthz` writes: a counter that changes on every probe, so it commits.
CREATE TABLE ledger_health (
    id        integer     PRIMARY KEY CHECK (id = 1),
    probes    bigint      NOT NULL,
    probed_at timestamptz NOT NULL
);
INSERT INTO ledger_health (id, probes, probed_at) VALUES (1, 0, now());
