-- Several masters on one database (SPEC §11).
-- - Each master records itself here and refreshes `last_seen_at` (`GET /masters`); rows
--   unseen for a day are dropped when a master starts.
-- - (Not in SQL: a master announces the tasks it ended on the channel `task_final`, a
--   NOTIFY per few milliseconds carrying many ids, so long polls on other masters wake.
--   A trigger notifying per row would take PostgreSQL's one notify lock for every
--   commit, through its WAL flush, and cost a third of the throughput.)

-- Milliseconds from `at` to now, by the database's clock (how long ago a task was
-- assigned, for a master that did not offer it itself).
CREATE FUNCTION milliseconds_since(at timestamptz) RETURNS bigint
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (extract(epoch FROM now() - at) * 1000)::bigint;

CREATE TABLE masters (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url          text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);
