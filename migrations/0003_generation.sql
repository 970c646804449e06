-- hqdb catalog, version 3: the write counter becomes a random generation.
-- Every change to an hq table's rows or codebooks writes a fresh random 63-bit value here, in
-- the same transaction. A connection's code cache remembers the generation it reflects; any
-- other value means "reload". A counter could come back to the value a cache remembers (a
-- rollback to V, then another connection's commit to V+1); a random value does not.
ALTER TABLE hqdb_tables RENAME COLUMN version TO generation;
