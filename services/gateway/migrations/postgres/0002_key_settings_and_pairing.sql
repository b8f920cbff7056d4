-- What an API key may do and until when. `scopes` stays a comma-separated list;
-- `namespaces` NULL means every namespace; money is integer micro-dollars. `prefix` is the key's first characters, to
-- recognise it in a list; the key itself is never stored.
ALTER TABLE api_keys ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN namespaces TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN daily_budget_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN requests_per_minute BIGINT;
ALTER TABLE api_keys ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;

-- One-time pairing codes: only the SHA-256 of the code is kept; a code is burned after
-- `max_attempts` wrong tries, used once, and expires.
CREATE TABLE pairings (
    id            TEXT PRIMARY KEY,
    code_hash     TEXT NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    namespaces    TEXT,
    device_name   TEXT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    state         TEXT NOT NULL DEFAULT 'pending',
    key_id        TEXT
);
CREATE INDEX pairings_pending ON pairings (state, expires_at);
