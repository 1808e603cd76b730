-- 004_sessions.sql - sign-in sessions of the web dashboard
-- (docs/controller.md, "Sign-in and sessions"). users.password_hash (from
-- 001) holds "scrypt$N$r$p$salt_hex$hash_hex"; NULL = the user cannot sign
-- in with a password.
--
-- As for API tokens, only the SHA-256 of a session's token is kept, found
-- by its first 8 bytes (lookup) and then compared in constant time. A
-- session ends at expires_at: the earlier of last_seen + 12 hours (moved on
-- use) and created_at + 7 days. csrf_token is the value the browser sends
-- back in X-CSRF-Token with every change; it is not a credential by itself.
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lookup     INTEGER NOT NULL,
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    csrf_token TEXT NOT NULL CHECK (length(csrf_token) = 64),
    created_at INTEGER NOT NULL, -- ms since 1970, UTC
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at >= created_at)
);
CREATE INDEX sessions_lookup ON sessions (lookup);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
