-- Several masters on one database (SPEC §11).
-- - Each master records itself here and refreshes `last_seen_at` (`GET /masters`); rows
--   unseen for a day are dropped when a master starts.
-- - A task's end is announced on the channel `task_final` (payload: the task id and the
--   `application_name` of the session that ended it), so a long poll on any master wakes
--   when another master records the result. Masters also re-read now and then, so a
--   notification lost while a listener reconnects strands nobody.
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

CREATE FUNCTION task_final_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('task_final', NEW.task_id::text || ' ' || current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER task_final_on_event AFTER INSERT ON task_events
    FOR EACH ROW WHEN (NEW.kind IN ('done', 'failed', 'cancelled'))
    EXECUTE FUNCTION task_final_announce();
