-- Spend per scope and UTC day, in micro-dollars. `reserved` is the worst-case cost of
-- calls in flight: a call reserves before it goes upstream, only while
-- spent + reserved + its worst case stays within the cap (one conditional UPDATE, so
-- replicas sharing this table cannot overshoot together), and settles after.
-- scope: `global`, or `key:<caller>` for a per-API-key budget.
CREATE TABLE llm_budget_days (
    scope            TEXT COLLATE "C" NOT NULL,
    day              TEXT COLLATE "C" NOT NULL,
    spent_micros     BIGINT NOT NULL,
    reserved_micros  BIGINT NOT NULL,
    requests         BIGINT NOT NULL,
    PRIMARY KEY (scope, day)
);

-- One row per finished call (answered, failed or refused). Times are microseconds
-- since the Unix epoch (UTC); day is its UTC date (YYYY-MM-DD).
CREATE TABLE llm_usage (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    created_at          BIGINT NOT NULL,
    day                 TEXT COLLATE "C" NOT NULL,
    request_id          TEXT NOT NULL,
    caller              TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    outcome             TEXT NOT NULL,
    prompt_tokens       BIGINT NOT NULL,
    completion_tokens   BIGINT NOT NULL,
    cached_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_micros         BIGINT NOT NULL,
    latency_ms          BIGINT NOT NULL,
    first_token_ms      BIGINT NOT NULL,
    streamed            BIGINT NOT NULL,
    fell_back           BIGINT NOT NULL,
    downgraded          BIGINT NOT NULL
);
CREATE INDEX llm_usage_by_day ON llm_usage (day, provider, model);
CREATE INDEX llm_usage_by_caller ON llm_usage (caller, day);
