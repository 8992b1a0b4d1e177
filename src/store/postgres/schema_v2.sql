-- consentd's PostgreSQL schema, version 2: the retention horizon of the
-- watch log. Never edited after release: a change is a new version.
--
-- Retention deletes old rows of consentd_changes. deleted_through is the
-- highest transaction id of a deleted row: a watch token whose snapshot does
-- not see every transaction up to it may have missed a deleted row, and has
-- expired (src/store/postgres/watch.rs).
CREATE TABLE consentd_watch_horizon (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    deleted_through xid8    NOT NULL
);
