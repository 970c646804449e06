-- hqdb catalog, version 2: trained models stored in the database.
-- A model is its JSON config (architecture, code shape, featurizer vocabulary, training
-- metrics) plus named tensors kept as raw little-endian bytes with their dtype and shape.
-- Nothing here is ever unpickled.
CREATE TABLE IF NOT EXISTS hqdb_models (
    name        TEXT PRIMARY KEY,
    config      TEXT NOT NULL CHECK (json_valid(config)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS hqdb_model_tensors (
    model   TEXT NOT NULL REFERENCES hqdb_models(name) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    dtype   TEXT NOT NULL CHECK (dtype IN ('float32', 'int64', 'uint8', 'uint16')),
    shape   TEXT NOT NULL CHECK (json_valid(shape)),
    data    BLOB NOT NULL,
    PRIMARY KEY (model, name)
);
