-- The two events every task has, written by the statement that makes the change:
-- one statement per hot write instead of two, and the event can never be forgotten.
-- Rarer transitions (assigned, unassigned, requeued, cancelled) keep their explicit
-- inserts, because their detail (a reason) is not in the row.

CREATE TRIGGER task_events_on_submit AFTER INSERT ON tasks BEGIN
    INSERT INTO task_events (task_id, at, kind, slave_id, detail)
    VALUES (NEW.id, NEW.submitted_at, 'submitted', NEW.slave_id,
            CASE WHEN NEW.slave_id IS NOT NULL
                 THEN 'assigned to this slave at submission, attempt ' || NEW.attempts END);
END;

-- done, or failed (by a slave's error or out of attempts: the reason is in `error`).
CREATE TRIGGER task_events_on_finish AFTER UPDATE OF status ON tasks
WHEN NEW.status IN ('done', 'failed') AND OLD.status <> NEW.status BEGIN
    INSERT INTO task_events (task_id, at, kind, slave_id, detail)
    VALUES (NEW.id, NEW.finished_at, NEW.status, NEW.slave_id, NEW.error);
END;
