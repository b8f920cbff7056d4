-- Edges of the knowledge graph. Times are microseconds since the Unix epoch (UTC);
-- metadata (the edge's properties) is a JSON object as text. Node ids are not foreign
-- keys: the nodes live in the storage service.
-- Ids compare bytewise (COLLATE "C"): UUIDv7 text order is creation order.
CREATE TABLE edges (
    id          TEXT COLLATE "C" PRIMARY KEY,
    source_id   TEXT COLLATE "C" NOT NULL,
    target_id   TEXT COLLATE "C" NOT NULL,
    relation    TEXT NOT NULL,
    weight      DOUBLE PRECISION NOT NULL,
    metadata    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
-- one edge per (source, target, relation); also finds a node's outgoing edges
CREATE UNIQUE INDEX edges_by_ends ON edges (source_id, target_id, relation);
CREATE INDEX edges_by_source ON edges (source_id, id);
CREATE INDEX edges_by_target ON edges (target_id, id);
CREATE INDEX edges_by_relation ON edges (relation, id);

-- What the graph knows of a node besides its edges, from node events (version is the
-- node's) or set by a caller (version 0). A deleted node keeps its row with deleted = 1
-- so that a late or repeated event cannot bring it back, and no edge may join it.
CREATE TABLE graph_nodes (
    id         TEXT COLLATE "C" PRIMARY KEY,
    namespace  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    title      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    deleted    BIGINT NOT NULL
);

-- Transactional outbox: written in the same transaction as the change it announces,
-- deleted once the bus has accepted the event.
CREATE TABLE outbox (
    seq       BIGSERIAL PRIMARY KEY,
    subject   TEXT NOT NULL,
    envelope  TEXT NOT NULL
);
