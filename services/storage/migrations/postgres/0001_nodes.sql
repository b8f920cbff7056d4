-- Knowledge nodes. Times are microseconds since the Unix epoch (UTC); tags and metadata
-- are JSON text, tags also indexed one row each in node_tags for filtering.
-- Ids compare bytewise (COLLATE "C"): UUIDv7 text order is creation order.
CREATE TABLE nodes (
    id          TEXT COLLATE "C" PRIMARY KEY,
    namespace   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    tags        TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    source      TEXT,
    importance  DOUBLE PRECISION NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX nodes_by_namespace ON nodes (namespace, id);
CREATE INDEX nodes_by_kind ON nodes (kind, id);

CREATE TABLE node_tags (
    tag      TEXT NOT NULL,
    node_id  TEXT COLLATE "C" NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, node_id)
);
CREATE INDEX node_tags_by_node ON node_tags (node_id);

-- Transactional outbox: written in the same transaction as the change it announces,
-- deleted once the bus has accepted the event.
CREATE TABLE outbox (
    seq       BIGSERIAL PRIMARY KEY,
    subject   TEXT NOT NULL,
    envelope  TEXT NOT NULL
);
