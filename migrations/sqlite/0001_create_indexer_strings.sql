-- The indexer's strings: one row per (organization, string), its id assigned once.
-- Ids of stored strings start at 65536; ids below are reserved for shared strings,
-- which are never stored. The CHECK makes a collision impossible.
CREATE TABLE indexer_strings (
    id              INTEGER PRIMARY KEY AUTOINCREMENT CHECK (id >= 65536),
    organization_id INTEGER NOT NULL,
    string          TEXT    NOT NULL CHECK (length(string) <= 200),
    date_added      INTEGER NOT NULL, -- unix seconds
    last_seen       INTEGER NOT NULL, -- unix seconds
    UNIQUE (organization_id, string)
);

INSERT INTO sqlite_sequence (name, seq) VALUES ('indexer_strings', 65535);
