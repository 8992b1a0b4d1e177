-- consentd's PostgreSQL schema, version 2: the retention horizon of the
-- watch log. Never edited after release: a change is a new version.
--
-- Retention deletes old rows of consentd_changes. deleted_in is a snapshot
-- (pg_snapshot text) taken after the last deletion: every deleted row is
-- visible in it. A watch token whose snapshot does not see everything this
-- one sees may have missed a deleted row, and has expired
-- (src/store/postgres/watch.rs).
CREATE TABLE consentd_watch_horizon (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    deleted_in text    NOT NULL
);
