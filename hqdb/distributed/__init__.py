"""hqdb past one machine, on Ray (the optional extra ``distributed``: ``pip install -e '.[distributed]'``).

- :class:`ShardedCollection`: a set of ordinary hqdb files, one per shard, each served by a Ray
  actor; inserts are routed by a stable hash of the key, searches fan out and merge exactly (the
  same hits, in the same order, as one file holding every row).
- :func:`encode_into_shards`: a large corpus encoded by Ray Data actors holding the model, written
  into the shards, resumable after a crash.
- :func:`train_distributed`: torch DistributedDataParallel training through Ray Train
  (:class:`DDP` is the hook :func:`hqdb.train` takes; it also works under ``torchrun``).

See docs/scaling.md. Importing this package needs Ray only when one of these is used.
"""

from __future__ import annotations

from .shards import ShardedCollection, ShardError, shard_of

__all__ = ["ShardedCollection", "ShardError", "shard_of", "encode_into_shards", "train_distributed", "DDP"]


def __getattr__(name: str):
    # Ray Data / Ray Train / torch are imported only when these are asked for.
    if name == "encode_into_shards":
        from .encode import encode_into_shards

        return encode_into_shards
    if name in ("train_distributed", "DDP"):
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'hqdb.distributed' has no attribute {name!r}")
