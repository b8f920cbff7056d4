-- Request limits per provider set through the API (PUT /api/v1/rate-limits); they
-- override the configuration's and every replica reads them.
CREATE TABLE llm_rate_limits (
    provider             TEXT PRIMARY KEY,
    requests_per_minute  BIGINT NOT NULL,
    requests_per_hour    BIGINT NOT NULL,
    burst                BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- Daily caps per API key set through the API (PUT /api/v1/llm/budget), in
-- micro-dollars; a key's spend is the llm_budget_days row of scope `key:<id>`.
CREATE TABLE llm_key_budgets (
    api_key_id    TEXT PRIMARY KEY,
    cap_micros    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- The API key a call came with, and what kind of call it was (chat or embed).
ALTER TABLE llm_usage ADD COLUMN api_key_id TEXT NOT NULL DEFAULT '';
ALTER TABLE llm_usage ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat';
CREATE INDEX llm_usage_by_key ON llm_usage (api_key_id, day);
CREATE INDEX llm_usage_by_time ON llm_usage (created_at);
