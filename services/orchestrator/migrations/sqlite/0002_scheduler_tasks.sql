-- Free-standing scheduler tasks: one shared graph. `state` is pending, running,
-- completed, failed or cancelled; "ready" is derived (pending with every dependency
-- completed), so completing a task never has to touch its dependants. `spec` is the
-- task's JSON (description, assignee, payload, ...); times are UTC microseconds.
CREATE TABLE scheduler_tasks (
    task_id     TEXT PRIMARY KEY NOT NULL,
    spec        TEXT NOT NULL,
    priority    BIGINT NOT NULL,
    state       TEXT NOT NULL,
    worker      TEXT NOT NULL,
    output      TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);

CREATE INDEX scheduler_tasks_state ON scheduler_tasks (state, priority);

CREATE TABLE scheduler_task_dependencies (
    task_id    TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);

CREATE INDEX scheduler_task_dependencies_upstream ON scheduler_task_dependencies (depends_on);
