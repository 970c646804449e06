"""Encoding a large corpus into a sharded collection with Ray Data.

``map_batches`` runs a pool of encoder actors (a class-based UDF: each loads the model from a
shard file once and keeps it; a GPU each when the cluster has them — the numpy towers ignore it,
a torch featurizer such as MiniLM uses it). Each batch comes back as packed bit codes and
quantization codes, routed to its shard, and the driver hands it to that shard's actor, which
commits it in one transaction. The ids already in the shards are the record of what is done: an
encoder skips every input row whose id its shard already holds, so a run that crashed (driver,
actor or node) is resumed by running the same call again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..errors import CollectionError
from ..progress import progress_bar
from .shards import ShardedCollection, shard_of

__all__ = ["encode_into_shards"]


class _Encoder:
    """The map_batches UDF: {id, inputs, columns} → {id, shard, new, codes per modality, columns}."""

    def __init__(self, paths: list[str], name: str, key: str | None, id_column: str, modalities: list[str]):
        import hqdb

        self.conns = [hqdb.connect(p, readonly=True) for p in paths]
        self.colls = [db.collection(name) for db in self.conns]
        self.model = self.colls[0].model
        self.key, self.id_column, self.modalities = key, id_column, modalities

    def __call__(self, batch: dict) -> dict:
        from ..collections import _hit_columns
        from ..kernels import pack_bits

        ids = np.asarray(batch[self.id_column], dtype=np.int64)
        keys = ids.tolist() if self.key is None else list(batch[self.key])
        shard = np.array([shard_of(k, len(self.colls)) for k in keys], dtype=np.int64)
        new = np.ones(len(ids), dtype=bool)
        for s in np.unique(shard).tolist():
            mine = np.flatnonzero(shard == s)
            have = _hit_columns(self.colls[s], ids[mine].tolist())
            new[mine] = [int(r) not in have for r in ids[mine]]
        out = {"id": ids, "shard": shard, "new": new}
        model = self.model
        for m in self.modalities:
            values = batch[m]
            todo = values[new]
            bits = np.zeros((len(ids), model.bits // 8), dtype=np.uint8)
            qcodes = np.zeros((len(ids), model.books), dtype=np.uint16 if model.codewords > 256 else np.uint8)
            if len(todo):
                x = [str(v) for v in todo] if todo.dtype.kind in "UO" else np.ascontiguousarray(todo, dtype=np.float32)
                bitf, f = model.encode(m, x)
                bits[new] = pack_bits(bitf)
                if model.books:
                    qcodes[new] = model.quantize(f)
            out[f"{m}.code"], out[f"{m}.qcode"] = bits, qcodes
        for c, values in batch.items():
            if c not in out and c not in self.modalities and c != self.id_column:
                out[c] = values
        return out


def _dataset(data, id_column: str, batch_size: int):
    """A Ray Dataset from a Dataset or a mapping of equal-length columns (2-D arrays become
    tensor columns)."""
    import ray.data

    if isinstance(data, ray.data.Dataset):
        return data
    if not isinstance(data, Mapping):
        raise CollectionError("encode_into_shards takes a ray.data.Dataset or a dict of columns")
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    cols = {}
    for name, values in data.items():
        arr = np.asarray(values)
        cols[name] = (
            ArrowTensorArray.from_numpy(arr)
            if arr.ndim > 1
            else pa.array(arr.tolist() if arr.dtype.kind in "UO" else arr)
        )
    if id_column not in cols:
        raise CollectionError(f"the data needs an id column {id_column!r} (each item's global id)")
    table = pa.table(cols)
    # One block per batch, made here: a repartition task could wait forever for a CPU that the
    # encoder actors hold on a small cluster.
    return ray.data.from_arrow([table.slice(s, batch_size) for s in range(0, max(len(table), 1), batch_size)])


def encode_into_shards(
    sharded: ShardedCollection,
    data,
    *,
    id_column: str = "id",
    batch_size: int = 1024,
    concurrency: int = 2,
    num_cpus: float = 1,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Encode ``data`` into ``sharded`` with Ray Data and return ``{"written", "skipped"}``.

    ``data``: a ``ray.data.Dataset`` or a dict of columns, with ``id_column`` (each item's global
    id, its rowid in its shard: stable ids make a re-run skip what is done), the model's
    modalities (features as a 2-D array / tensor column, or raw text) and any of the
    collection's columns. ``concurrency`` encoder actors of ``num_cpus`` CPUs each (a GPU each
    when the cluster has GPUs) encode ``batch_size`` rows per call; ``progress`` shows a bar over
    the input rows; ``on_batch(rows)`` is called after each batch is committed. Rows whose id is
    already in its shard are skipped, so after a crash the same call resumes the work."""
    import ray

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CollectionError(f"batch_size must be a positive integer, got {batch_size!r}")
    ds = _dataset(data, id_column, batch_size)
    names = ds.schema().names
    modalities = [m for m in sharded.modalities if m in names]
    if not modalities:
        raise CollectionError(f"the data has none of the inputs {list(sharded.modalities)} (columns: {names})")
    if id_column not in names:
        raise CollectionError(f"the data needs an id column {id_column!r} (each item's global id)")
    if sharded.key is not None and sharded.key not in names:
        raise CollectionError(f"the data needs the key column {sharded.key!r}: items are routed by it")
    unknown = set(names) - set(modalities) - set(sharded.columns) - {id_column}
    if unknown:
        raise CollectionError(f"unknown column(s) {sorted(unknown)}; columns: {list(sharded.columns)}")
    total = ds.count()
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    encoded = ds.map_batches(
        _Encoder,
        fn_constructor_args=(sharded.paths, sharded.name, sharded.key, id_column, modalities),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=gpus,
    )
    written = skipped = 0
    bar = progress_bar(total, f"encode {sharded.name}", progress)
    try:
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            new = np.asarray(batch["new"], dtype=bool)
            shard = np.asarray(batch["shard"])[new]
            ids = np.asarray(batch["id"], dtype=np.int64)[new]
            calls: dict[int, tuple[str, tuple, dict]] = {}
            for s in np.unique(shard).tolist():
                sel = np.flatnonzero(new)[shard == s]
                codes = {
                    m: (batch[f"{m}.code"][sel], batch[f"{m}.qcode"][sel] if sharded.books else None)
                    for m in modalities
                }
                meta = {c: [_plain(v) for v in batch[c][sel]] for c in sharded.columns if c in batch}
                calls[s] = ("insert_codes", (ids[shard == s], codes, meta), {})
            if calls:
                written += sum(sharded._fanout(calls).values())
            skipped += int((~new).sum())
            bar.update(len(new))
            if on_batch is not None:
                on_batch(len(new))
    finally:
        bar.close()
    if written:
        sharded._refresh_next()
    return {"written": written, "skipped": skipped}


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
