-- 001_init.sql - the first schema of the controller's database.
--
-- Applied by store_open (controller/store.c) inside one transaction together
-- with every other pending migration; PRAGMA user_version records the last one
-- applied. Never edit a migration that has shipped: add the next NNN_name.sql.
-- docs/controller-store.md describes every table for operators.
--
-- Policy objects carry an etag: the number of the revision that last changed
-- the row. A client sends it back to say which state it read.

CREATE TABLE regions (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    etag INTEGER NOT NULL CHECK (etag >= 1)
);

-- An office lies in one region; a region with offices cannot be deleted
-- (NO ACTION: the foreign key refuses it).
CREATE TABLE offices (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    region_id    INTEGER NOT NULL REFERENCES regions (id),
    name         TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    lan_prefixes TEXT NOT NULL DEFAULT '[]' CHECK (json_type(lan_prefixes) = 'array'),
    etag         INTEGER NOT NULL CHECK (etag >= 1)
);
CREATE INDEX offices_region ON offices (region_id);

-- A group with no office applies in every office. Names are unique per
-- office; the store also keeps a global group's name apart from every
-- office group's, since both appear in the same node document.
CREATE TABLE groups (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    office_id INTEGER REFERENCES offices (id),
    sources   TEXT NOT NULL CHECK (json_type(sources) = 'array'),
    users     TEXT NOT NULL DEFAULT '[]' CHECK (json_type(users) = 'array'),
    etag      INTEGER NOT NULL CHECK (etag >= 1)
);
CREATE UNIQUE INDEX groups_name ON groups (coalesce(office_id, 0), name);
CREATE INDEX groups_by_name ON groups (name);
CREATE INDEX groups_office ON groups (office_id);

-- Enforcement settings of one scope. NULL in a column = inherit from the
-- scope above. Exactly one global row; one row per region and per office,
-- created with it and deleted with it.
CREATE TABLE settings (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    scope               TEXT NOT NULL CHECK (scope IN ('global', 'region', 'office')),
    region_id           INTEGER UNIQUE REFERENCES regions (id) ON DELETE CASCADE,
    office_id           INTEGER UNIQUE REFERENCES offices (id) ON DELETE CASCADE,
    ports               TEXT CHECK (ports IS NULL OR json_type(ports) = 'object'),
    require_certificate INTEGER CHECK (require_certificate IN (0, 1)),
    block_executables   INTEGER CHECK (block_executables IN (0, 1)),
    use_lists           TEXT CHECK (use_lists IS NULL OR json_type(use_lists) = 'array'),
    block_high_ports    INTEGER CHECK (block_high_ports IN (0, 1)),
    high_port_threshold INTEGER CHECK (high_port_threshold BETWEEN 1 AND 65535),
    open_ports          TEXT CHECK (open_ports IS NULL OR json_type(open_ports) = 'array'),
    etag                INTEGER NOT NULL CHECK (etag >= 1),
    CHECK ((scope = 'global' AND region_id IS NULL AND office_id IS NULL) OR
           (scope = 'region' AND region_id IS NOT NULL AND office_id IS NULL) OR
           (scope = 'office' AND office_id IS NOT NULL AND region_id IS NULL))
);
CREATE UNIQUE INDEX settings_global ON settings (scope) WHERE scope = 'global';

-- Rules at four scopes; the column of the scope names its object, and the
-- rule goes with it (ON DELETE CASCADE). value is '' for kind 'skype'.
CREATE TABLE rules (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    scope     TEXT NOT NULL CHECK (scope IN ('global', 'region', 'office', 'group')),
    region_id INTEGER REFERENCES regions (id) ON DELETE CASCADE,
    office_id INTEGER REFERENCES offices (id) ON DELETE CASCADE,
    group_id  INTEGER REFERENCES groups (id) ON DELETE CASCADE,
    kind      TEXT NOT NULL CHECK (kind IN ('skype', 'domain', 'prefix', 'url_suffix')),
    value     TEXT NOT NULL,
    action    TEXT NOT NULL CHECK (action IN ('allow', 'block')),
    comment   TEXT NOT NULL DEFAULT '',
    etag      INTEGER NOT NULL CHECK (etag >= 1),
    CHECK ((scope = 'global' AND region_id IS NULL AND office_id IS NULL AND group_id IS NULL) OR
           (scope = 'region' AND region_id IS NOT NULL AND office_id IS NULL AND group_id IS NULL) OR
           (scope = 'office' AND office_id IS NOT NULL AND region_id IS NULL AND group_id IS NULL) OR
           (scope = 'group' AND group_id IS NOT NULL AND region_id IS NULL AND office_id IS NULL)),
    CHECK ((kind = 'skype') = (value = ''))
);
CREATE UNIQUE INDEX rules_unique
    ON rules (scope, coalesce(region_id, office_id, group_id, 0), kind, value);
CREATE INDEX rules_region ON rules (region_id) WHERE region_id IS NOT NULL;
CREATE INDEX rules_office ON rules (office_id) WHERE office_id IS NOT NULL;
CREATE INDEX rules_group ON rules (group_id) WHERE group_id IS NOT NULL;

-- Named lists of domains, prefixes and URL suffixes: json is the list object
-- exactly as a node's policy document carries it under "lists". shipped marks
-- the lists seeded from shared/lists/ when the database was created.
CREATE TABLE lists (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    category TEXT NOT NULL,
    json     TEXT NOT NULL CHECK (json_type(json) = 'object'),
    shipped  INTEGER NOT NULL DEFAULT 0 CHECK (shipped IN (0, 1)),
    etag     INTEGER NOT NULL CHECK (etag >= 1)
);

-- A node is part of the policy (name and office: the compiler needs them);
-- the other columns are its state as the hub last saw it and are not
-- revisioned. An office with nodes cannot be deleted.
CREATE TABLE nodes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    office_id        INTEGER NOT NULL REFERENCES offices (id),
    etag             INTEGER NOT NULL CHECK (etag >= 1),
    enrollment       TEXT NOT NULL DEFAULT 'pending'
                     CHECK (enrollment IN ('pending', 'enrolled', 'revoked')),
    last_seen        INTEGER, -- ms since 1970, UTC
    enforced_version INTEGER,
    pending_version  INTEGER,
    last_error       TEXT
);
CREATE INDEX nodes_office ON nodes (office_id);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash TEXT,
    created_at    INTEGER NOT NULL
);

-- Only the SHA-256 of a token is kept; lookup is its first 8 bytes, so a
-- token is found by index and then compared in constant time.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lookup       INTEGER NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    label        TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX api_tokens_lookup ON api_tokens (lookup);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- One row per policy revision, never deleted. changes is what changed from
-- the revision before: [{"type", "op": added|removed|changed, "id" (or
-- "scope", "scope_id"), "before", "after"}], each object as the REST API
-- shows its policy fields. Some revisions (checkpoints: revision 1, and
-- whenever the changes since the last one outweigh it) also keep the whole
-- model in snapshot; any revision is its checkpoint plus the changes since.
-- bytes is the size of changes and snapshot, ahead of them in the row so
-- that reading it does not read them.
CREATE TABLE revisions (
    number     INTEGER PRIMARY KEY CHECK (number >= 1),
    created_at INTEGER NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL DEFAULT '',
    bytes      INTEGER NOT NULL CHECK (bytes >= 0),
    changes    TEXT NOT NULL CHECK (json_type(changes) = 'array'),
    snapshot   TEXT CHECK (snapshot IS NULL OR json_type(snapshot) = 'object')
);
CREATE INDEX revisions_checkpoints ON revisions (number) WHERE snapshot IS NOT NULL;

-- Who changed what. before/after are the object as it was and became (NULL
-- on create/delete); revision is NULL for changes outside the policy
-- (users, tokens, node enrollment).
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    before      TEXT CHECK (before IS NULL OR json_valid(before)),
    after       TEXT CHECK (after IS NULL OR json_valid(after)),
    revision    INTEGER REFERENCES revisions (number)
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_object ON audit (object_type, object_id);

-- Node events, each (node, seq) once. office_id/region_id are the node's at
-- the time the event arrived; no foreign keys, so events outlive the
-- objects they name. Queries read newest first by (time, id).
CREATE TABLE events (
    id                  INTEGER PRIMARY KEY,
    node                TEXT NOT NULL,
    seq                 INTEGER NOT NULL CHECK (seq >= 1),
    time                INTEGER NOT NULL, -- ms since 1970, UTC
    received            INTEGER NOT NULL,
    type                TEXT NOT NULL CHECK (type IN ('block', 'exception', 'allow')),
    verdict             TEXT NOT NULL CHECK (verdict IN ('blocked', 'allowed')),
    reason              TEXT NOT NULL,
    detail              TEXT NOT NULL DEFAULT '',
    source              TEXT,
    source_port         INTEGER,
    destination         TEXT,
    destination_address TEXT,
    port                INTEGER,
    protocol            TEXT,
    group_name          TEXT,
    office_id           INTEGER,
    region_id           INTEGER,
    policy_version      INTEGER,
    bytes_up            INTEGER NOT NULL DEFAULT 0,
    bytes_down          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (node, seq)
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_office_time ON events (office_id, time);
CREATE INDEX events_region_time ON events (region_id, time);
CREATE INDEX events_group_time ON events (group_name, time);
CREATE INDEX events_type_time ON events (type, time);
