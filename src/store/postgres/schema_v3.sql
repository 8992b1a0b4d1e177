-- consentd's PostgreSQL schema, version 3: erasure (EraseProfile). Never
-- edited after release: a change is a new version.
--
-- A tenant's erasure secret: the HMAC-SHA256 key of its tombstones' address
-- hashes, made at its first erasure and never changed. It lives beside the
-- tombstones so that every replica, dump and backup carries both.
CREATE TABLE consentd_erasure_keys (
    tenant text COLLATE "C" NOT NULL PRIMARY KEY,
    value  bytea NOT NULL
);

-- What an erased person had opted out of, under the keyed hash of one of
-- their addresses (32 bytes). No address, no profile id.
CREATE TABLE consentd_tombstones (
    tenant text COLLATE "C" NOT NULL,
    hash   bytea NOT NULL,
    value  bytea NOT NULL,
    PRIMARY KEY (tenant, hash)
);

-- The record of each erasure (who asked, when, why, what it removed), with
-- no personal data of the person erased.
CREATE TABLE consentd_erasures (
    tenant    text COLLATE "C" NOT NULL,
    erased_at bigint NOT NULL,
    id        bigint NOT NULL,
    value     bytea  NOT NULL,
    PRIMARY KEY (tenant, erased_at, id)
);
