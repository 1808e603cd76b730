-- 002_link.sql - the controller <-> node link (docs/link.md): enrollment
-- tokens, what the hub knows of each node, and the staged rollout.

-- The node's certificate (only its fingerprint: the hub compares the one a
-- node presents), the software it said it runs, its connection, its event
-- high-water mark (the highest seq stored, kept here so retention cannot
-- make an old seq look new) and the spool's drop count, its last counters.
ALTER TABLE nodes ADD COLUMN cert_fingerprint TEXT
    CHECK (cert_fingerprint IS NULL OR length(cert_fingerprint) = 64);
ALTER TABLE nodes ADD COLUMN enrolled_at INTEGER;
ALTER TABLE nodes ADD COLUMN software TEXT;
ALTER TABLE nodes ADD COLUMN connected INTEGER NOT NULL DEFAULT 0 CHECK (connected IN (0, 1));
ALTER TABLE nodes ADD COLUMN events_seq INTEGER NOT NULL DEFAULT 0 CHECK (events_seq >= 0);
ALTER TABLE nodes ADD COLUMN events_dropped INTEGER NOT NULL DEFAULT 0 CHECK (events_dropped >= 0);
ALTER TABLE nodes ADD COLUMN stats TEXT CHECK (stats IS NULL OR json_type(stats) = 'object');
ALTER TABLE nodes ADD COLUMN stats_at INTEGER;

-- One-time enrollment tokens: only the SHA-256 of the secret is kept.
-- expires_at is moved to the past when an operator expires a token.
CREATE TABLE enrollment_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id    INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX enrollment_tokens_node ON enrollment_tokens (node_id);

-- The staged rollout: one row. In mode 'auto' every office runs the newest
-- revision; in 'manual' every office runs `released`, except the canary
-- offices (listed, or in a listed region), which run canary_revision.
CREATE TABLE rollout (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    mode            TEXT NOT NULL DEFAULT 'auto' CHECK (mode IN ('auto', 'manual')),
    released        INTEGER REFERENCES revisions (number),
    canary_revision INTEGER REFERENCES revisions (number),
    canary_offices  TEXT NOT NULL DEFAULT '[]' CHECK (json_type(canary_offices) = 'array'),
    canary_regions  TEXT NOT NULL DEFAULT '[]' CHECK (json_type(canary_regions) = 'array'),
    updated_at      INTEGER,
    CHECK (mode = 'auto' OR released IS NOT NULL)
);
INSERT INTO rollout (id) VALUES (1);
