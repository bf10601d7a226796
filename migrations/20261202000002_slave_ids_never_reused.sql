-- A slave's id is never reused (SPEC §11, like task ids): task history names slaves by
-- id, and a deregistered slave's id given to a newcomer would rewrite that history.
-- `slaves.id` is a plain rowid, which SQLite reuses once the highest row is deleted, so
-- the highest id ever given is kept here (written only when a slave first registers).
CREATE TABLE slave_ids (
    last INTEGER NOT NULL
);
INSERT INTO slave_ids (last) SELECT COALESCE(MAX(id), 0) FROM slaves;

CREATE TRIGGER slave_ids_on_insert AFTER INSERT ON slaves BEGIN
    UPDATE slave_ids SET last = NEW.id WHERE last < NEW.id;
END;
