-- The audit log: one row per mutating call and per refused credential. Append-only:
-- nothing updates a row; only the retention task deletes, oldest first. No secret is
-- ever written here (no credential header, query string or body).
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,    -- UUIDv7: creation order, the paging cursor
    at            BIGINT NOT NULL,     -- UTC microseconds
    actor         TEXT NOT NULL,       -- API key id, or 'anonymous'
    action        TEXT NOT NULL,       -- 'METHOD /route/{template}'
    resource_type TEXT,
    resource_id   TEXT,
    status        BIGINT NOT NULL,
    client_ip     TEXT,
    user_agent    TEXT,
    request_id    TEXT
);
-- retention deletes by age
CREATE INDEX audit_log_at ON audit_log (at);
