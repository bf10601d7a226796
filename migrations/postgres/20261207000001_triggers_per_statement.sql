-- Counts and the two common events follow each statement rather than each row
-- (issue 14): the master stores a moment's submissions in one INSERT and records a
-- moment's results in one UPDATE.
--
-- Counts. Counted per row, such a statement locked the counter rows of many shards in
-- the order of its rows, and two of them (submissions and results, or two masters)
-- could wait on each other in a cycle: PostgreSQL then aborts one (40P01). Now each
-- statement adds its net change per status to the shard of its own session (backend
-- pid % 16: concurrent sessions mostly touch different counter rows), and locks those
-- rows in the order of their status text before changing them: every transaction takes
-- counter rows in one global order, so none waits in a cycle. The count of a status is
-- still the sum of its shards (which shard holds a change does not matter, so the
-- existing rows stay as they are).
--
-- Events. The `submitted` and `done`/`failed` events are one INSERT … SELECT per
-- statement from its transition table, instead of one PL/pgSQL call and one INSERT per
-- row; what they record is unchanged.

DROP TRIGGER task_counts_on_insert_or_delete ON tasks;
DROP TRIGGER task_counts_on_status ON tasks;
DROP FUNCTION task_counts_follow();
DROP TRIGGER task_events_on_submit ON tasks;
DROP TRIGGER task_events_on_finish ON tasks;
DROP FUNCTION task_events_follow();

-- Adds `changes` (status -> net change; zeros skipped) to this session's shard.
CREATE FUNCTION task_counts_add(changes jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    s smallint := pg_backend_pid() % 16;
BEGIN
    PERFORM 1 FROM task_counts
      WHERE shard = s AND changes ? status AND (changes ->> status)::bigint <> 0
      ORDER BY status
        FOR UPDATE;
    UPDATE task_counts SET n = n + (changes ->> status)::bigint
     WHERE shard = s AND changes ? status AND (changes ->> status)::bigint <> 0;
END $$;

CREATE FUNCTION tasks_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, at, kind, slave_id)
    SELECT id, submitted_at, 'submitted', slave_id FROM added ORDER BY id;
    PERFORM task_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
            (SELECT status, count(*) AS n FROM added GROUP BY status) AS per_status));
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM task_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, -n), '{}') FROM
            (SELECT status, count(*) AS n FROM removed GROUP BY status) AS per_status));
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, at, kind, slave_id, detail)
    SELECT a.id, a.finished_at, a.status, a.slave_id, a.error
      FROM before b JOIN after a USING (id)
     WHERE a.status IN ('done', 'failed') AND b.status <> a.status
     ORDER BY a.id;
    PERFORM task_counts_add(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
            (SELECT status, sum(n) AS n FROM
                (SELECT b.status, -1 AS n FROM before b JOIN after a USING (id) WHERE b.status <> a.status
                 UNION ALL
                 SELECT a.status, 1 FROM before b JOIN after a USING (id) WHERE b.status <> a.status) AS moves
              GROUP BY status) AS per_status));
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_after_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_after_insert();
CREATE TRIGGER tasks_after_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_after_delete();
CREATE TRIGGER tasks_after_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS before NEW TABLE AS after
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_after_update();
