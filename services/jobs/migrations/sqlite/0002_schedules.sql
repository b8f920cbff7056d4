-- Schedules: a job enqueued on a cron expression (cron) or every interval_secs seconds.
-- A tick is claimed by moving next_run_at on from the value read, so replicas fire it once.
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    cron           TEXT NOT NULL,
    interval_secs  BIGINT NOT NULL,
    timezone       TEXT NOT NULL,
    kind           TEXT NOT NULL,
    queue          TEXT NOT NULL,
    payload        TEXT NOT NULL,
    priority       BIGINT NOT NULL,
    max_attempts   BIGINT NOT NULL,
    enabled        BIGINT NOT NULL,
    allow_overlap  BIGINT NOT NULL,
    next_run_at    BIGINT NOT NULL,
    last_run_at    BIGINT,
    last_job_id    TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX schedules_by_name ON schedules (name);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled = 1;
