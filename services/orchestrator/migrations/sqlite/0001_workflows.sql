-- Workflow definitions, their executions, each step's durable result and the progress
-- log SSE streams replay. Times are microseconds since the Unix epoch (UTC); JSON is text.
CREATE TABLE workflows (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    format      TEXT NOT NULL,
    definition  TEXT NOT NULL,
    tags        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- `plan` is the parsed definition as JSON, frozen when the execution starts: an edit of
-- the workflow never changes a run. `owner` holds the run until `lease_expires_at`.
CREATE TABLE executions (
    id                TEXT PRIMARY KEY NOT NULL,
    workflow_id       TEXT NOT NULL,
    workflow_name     TEXT NOT NULL,
    plan              TEXT NOT NULL,
    state             TEXT NOT NULL,
    variables         TEXT NOT NULL,
    error             TEXT NOT NULL,
    triggered_by      TEXT NOT NULL,
    idempotency_key   TEXT,
    owner             TEXT,
    lease_expires_at  BIGINT,
    cancel_requested  BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);
CREATE UNIQUE INDEX executions_by_idempotency_key ON executions (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX executions_live ON executions (state) WHERE state IN ('pending', 'running');
CREATE INDEX executions_by_workflow ON executions (workflow_id, id);

CREATE TABLE execution_steps (
    execution_id  TEXT NOT NULL,
    step_id       TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    iteration     BIGINT NOT NULL,
    output        TEXT,
    error         TEXT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    PRIMARY KEY (execution_id, step_id)
);

CREATE TABLE progress (
    execution_id  TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    step_id       TEXT,
    progress      DOUBLE PRECISION NOT NULL,
    message       TEXT NOT NULL,
    data          TEXT NOT NULL,
    terminal      BIGINT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- Transactional outbox: written in the same transaction as the change it announces,
-- deleted once the bus has accepted the event.
CREATE TABLE outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    subject   TEXT NOT NULL,
    envelope  TEXT NOT NULL
);
