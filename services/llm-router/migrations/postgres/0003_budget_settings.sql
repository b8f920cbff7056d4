-- The global daily cap (micro-dollars) and what happens past it (reject = 1, or 0 to
-- downgrade), once set through the API (PUT /api/v1/llm/budget); until then each
-- replica uses its configuration's. One row (id 1), which every replica re-reads.
CREATE TABLE llm_budget_settings (
    id          BIGINT PRIMARY KEY,
    cap_micros  BIGINT NOT NULL,
    reject      BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
