-- The job queue. Times are microseconds since the Unix epoch (UTC); payload and result
-- are JSON objects as text. `attempt` counts leases and is the fencing token of the
-- current one; `retries` counts failed attempts (a lapsed lease is one).
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY NOT NULL,
    kind              TEXT NOT NULL,
    queue             TEXT NOT NULL,
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL,
    priority          BIGINT NOT NULL,
    retries           BIGINT NOT NULL,
    max_attempts      BIGINT NOT NULL,
    attempt           BIGINT NOT NULL,
    last_error        TEXT NOT NULL,
    result            TEXT,
    timeout_secs      BIGINT NOT NULL,
    idempotency_key   TEXT,
    schedule_id       TEXT,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    cancel_requested  BIGINT NOT NULL,
    progress          DOUBLE PRECISION NOT NULL,
    progress_message  TEXT NOT NULL,
    run_at            BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);
-- a reused key finds the job enqueued first
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- what a lease scans: waiting jobs, highest priority first, oldest first within one
CREATE INDEX jobs_ready ON jobs (priority DESC, id) WHERE state IN ('pending', 'failed');
-- what the reaper scans
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_by_state ON jobs (state, id);

-- Transactional outbox: written in the same transaction as the change it announces,
-- deleted once the bus has accepted the event.
CREATE TABLE outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    subject   TEXT NOT NULL,
    envelope  TEXT NOT NULL
);
