-- The proxy's shared shadow comparison store (`[shadow] store = "postgres"` in routes.toml), for
-- when several proxies shadow the same routes: each writes its comparisons here, and
-- `strangler report --database-url-env …` / `strangler corpus --database-url-env …` read them
-- all. One row per comparison; `record` is the redacted record exactly as the JSONL store keeps
-- it (proxy/src/shadow/record.rs), the other columns are copies for queries and indexes.
-- Retention: each proxy deletes the oldest rows beyond `store_max_rows`, at most once a minute.

CREATE TABLE strangler.shadow_comparisons (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at      timestamptz NOT NULL,
    proxy            text NOT NULL,
    route            text NOT NULL,
    endpoint         text NOT NULL,
    outcome          text NOT NULL,
    legacy_status    integer,
    candidate_status integer,
    record           jsonb NOT NULL
);

CREATE INDEX shadow_comparisons_route_recorded_at ON strangler.shadow_comparisons (route, recorded_at);
CREATE INDEX shadow_comparisons_recorded_at ON strangler.shadow_comparisons (recorded_at);

COMMENT ON TABLE strangler.shadow_comparisons IS
    'Shadow comparisons from every proxy with [shadow] store = "postgres"; trimmed to store_max_rows by the writers';
COMMENT ON COLUMN strangler.shadow_comparisons.id IS
    'Insertion order: readers go by id, and retention deletes the lowest ids';
COMMENT ON COLUMN strangler.shadow_comparisons.recorded_at IS
    'When the comparison finished (record.ts_unix_ms); `strangler report --since` filters on it';
COMMENT ON COLUMN strangler.shadow_comparisons.proxy IS
    'The proxy instance that compared: [shadow] proxy_id, else its host name';
COMMENT ON COLUMN strangler.shadow_comparisons.route IS
    'Route name from routes.toml (record.route)';
COMMENT ON COLUMN strangler.shadow_comparisons.endpoint IS
    'Endpoint template such as GET /users/{id} (record.endpoint)';
COMMENT ON COLUMN strangler.shadow_comparisons.outcome IS
    'match, noise, mismatch, error or timeout (record.outcome)';
COMMENT ON COLUMN strangler.shadow_comparisons.legacy_status IS
    'HTTP status the monolith answered; NULL when the shadow request failed';
COMMENT ON COLUMN strangler.shadow_comparisons.candidate_status IS
    'HTTP status the extracted service answered; NULL when the shadow request failed';
COMMENT ON COLUMN strangler.shadow_comparisons.record IS
    'The whole redacted comparison record, as in the JSONL store: what report and corpus read';
