-- consentd's PostgreSQL schema, version 1. Applied once, at start-up, by the
-- binary that ships it (src/store/postgres/schema.rs); never edited after
-- release: a change is a new version.
--
-- Keys are columns; values are consentd's own versioned record encoding
-- (bytea), the same bytes the sled store keeps. Ids and addresses are their
-- UTF-8 bytes (bytea: an id may hold any character, NUL included, which
-- text refuses, and bytea orders as consentd does, byte by byte, whatever
-- the database's collation); read them with convert_from(col, 'UTF8'). Columns that a query
-- filters on (statuses, expiry times) are kept beside the value, in the
-- same statement. Every table's primary key starts with the tenant.

CREATE TABLE consentd_profiles (
    tenant     text COLLATE "C" NOT NULL,
    profile_id bytea NOT NULL,
    value      bytea  NOT NULL,
    PRIMARY KEY (tenant, profile_id)
);

-- A profile's consent (and subscription) history: the legal record.
CREATE TABLE consentd_history (
    tenant     text COLLATE "C" NOT NULL,
    profile_id bytea NOT NULL,
    seq        bigint NOT NULL,
    value      bytea  NOT NULL,
    PRIMARY KEY (tenant, profile_id, seq)
);

-- address → profiles (derived from consentd_profiles, in the same commit).
CREATE TABLE consentd_address_users (
    tenant     text COLLATE "C" NOT NULL,
    kind       smallint NOT NULL,
    address    bytea NOT NULL,
    profile_id bytea NOT NULL,
    PRIMARY KEY (tenant, kind, address, profile_id)
);
CREATE INDEX consentd_address_users_by_profile ON consentd_address_users (tenant, profile_id);

-- The folded state of an address; status is the state's stored status
-- (the codec's tag: 1 VALID, 2 WITH_ERRORS, 3 QUARANTINED, 4 DENYLISTED).
CREATE TABLE consentd_addresses (
    tenant  text COLLATE "C" NOT NULL,
    kind    smallint NOT NULL,
    address bytea NOT NULL,
    status  smallint NOT NULL,
    value   bytea    NOT NULL,
    PRIMARY KEY (tenant, kind, address)
);
CREATE INDEX consentd_addresses_not_valid ON consentd_addresses (tenant, status, kind, address)
    WHERE status <> 1;

-- An address's log, in event-time order.
CREATE TABLE consentd_address_events (
    tenant     text COLLATE "C" NOT NULL,
    kind       smallint NOT NULL,
    address    bytea NOT NULL,
    event_time bigint   NOT NULL,
    seq        bigint   NOT NULL,
    value      bytea    NOT NULL,
    PRIMARY KEY (tenant, kind, address, event_time, seq)
);

-- Feedback event ids already recorded; they expire with the late-event horizon.
CREATE TABLE consentd_event_markers (
    tenant      text COLLATE "C" NOT NULL,
    event_id    bytea NOT NULL,
    kind        smallint NOT NULL,
    address     bytea NOT NULL,
    recorded_at bigint   NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
CREATE INDEX consentd_event_markers_expiry ON consentd_event_markers (recorded_at);

CREATE TABLE consentd_tenant_settings (
    tenant text COLLATE "C" NOT NULL PRIMARY KEY,
    value  bytea NOT NULL
);

CREATE TABLE consentd_services (
    tenant     text COLLATE "C" NOT NULL,
    service_id bytea NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (tenant, service_id)
);

-- status: the codec's tag (1 PENDING_CONFIRMATION, 2 ACTIVE, 3 UNSUBSCRIBED).
CREATE TABLE consentd_subscriptions (
    tenant     text COLLATE "C" NOT NULL,
    profile_id bytea NOT NULL,
    service_id bytea NOT NULL,
    status     smallint NOT NULL,
    value      bytea    NOT NULL,
    PRIMARY KEY (tenant, profile_id, service_id)
);
CREATE INDEX consentd_subscribers ON consentd_subscriptions (tenant, service_id, profile_id);

-- Double opt-in confirmation tokens, by the SHA-256 of the token.
CREATE TABLE consentd_tokens (
    tenant     text COLLATE "C" NOT NULL,
    hash       bytea  NOT NULL,
    expires_at bigint NOT NULL,
    value      bytea  NOT NULL,
    PRIMARY KEY (tenant, hash)
);
CREATE INDEX consentd_tokens_expiry ON consentd_tokens (expires_at);

CREATE TABLE consentd_usage_opt_outs (
    tenant  text COLLATE "C" NOT NULL,
    user_id bytea NOT NULL,
    value   bytea NOT NULL,
    PRIMARY KEY (tenant, user_id)
);

CREATE TABLE consentd_address_consent (
    tenant  text COLLATE "C" NOT NULL,
    kind    smallint NOT NULL,
    address bytea NOT NULL,
    value   bytea    NOT NULL,
    PRIMARY KEY (tenant, kind, address)
);

-- The committed-change feed: one row per committed transaction that changed
-- what decisions read, written in that transaction. Readers find new rows
-- by transaction-id snapshots (pg_current_snapshot, pg_visible_in_snapshot),
-- never by id alone: a transaction may commit after one with a higher id
-- was read. Rows older than the feed's retention are deleted.
CREATE TABLE consentd_changes (
    id          bigserial PRIMARY KEY,
    xid         xid8      NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at bigint    NOT NULL,
    tenants     text[]    NOT NULL,
    payload     bytea     NOT NULL
);
CREATE INDEX consentd_changes_xid ON consentd_changes (xid);
CREATE INDEX consentd_changes_recorded ON consentd_changes (recorded_at);
