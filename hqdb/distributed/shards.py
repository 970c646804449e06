"""Sharded collections: one ordinary hqdb file per shard, one Ray actor per shard.

Every item has a *global id*, which is its rowid in the shard that holds it; ids are unique over
the whole set. An item goes to shard ``shard_of(key, n)``: a blake2b hash of its key (the
collection's key column when it has one, else its global id) — stable across processes and
Python versions, unlike ``hash()``.

A search fans out to every shard and merges on the driver, exactly:

- 'aqd' and 'hamming' rank rows by (distance, Hamming, rowid): each shard's own top k contains
  every row of the global top k it holds, so merging the shards' lists by (distance, Hamming,
  global id) gives the single file's result.
- 'two_stage' keeps the ``max(candidates, k)`` rows of smallest (Hamming distance, rowid), then
  ranks those by (AQD distance, Hamming, rowid). Each shard returns its whole shortlist with both
  distances; the driver takes the global shortlist from their union by (Hamming, id) and ranks it
  by (AQD, Hamming, id). A shard's shortlist holds every row of the global one that lives in that shard,
  and a row's AQD distance does not depend on the other rows, so the result is the single file's.

Only ids and distances travel in the first round; the columns of the final hits are read from
their shards in a second round (one call per shard for a whole batch of queries).

A shard actor that dies (its process killed, its node lost) is restarted by Ray from its file
(``max_restarts``); the call that failed is retried once, and the caller sees :class:`ShardError`
only if the retry fails too. Writes that may have committed before the actor died are retried so
that rows already present are not inserted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CollectionError, HqdbError

MANIFEST = "{name}.shards.json"
FORMAT = 1


class ShardError(HqdbError):
    """A shard could not answer: its actor died and the retry failed as well, or its files are
    not a sharded collection."""


def _key_bytes(key) -> bytes:
    """The bytes hashed for a routing key: typed, so 1 and "1" go to their own shards."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, bool) or key is None:
        raise CollectionError(f"a routing key must be an int, str, bytes or float, got {key!r}")
    if isinstance(key, int):
        return b"i" + str(key).encode()
    if isinstance(key, str):
        return b"s" + key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return b"b" + bytes(key)
    if isinstance(key, float):
        return b"f" + float(key).hex().encode()
    raise CollectionError(f"a routing key must be an int, str, bytes or float, got {type(key).__name__}")


def shard_of(key, shards: int) -> int:
    """The shard (0..shards-1) an item with routing key ``key`` lives in: blake2b (8 bytes) of
    the typed key, modulo the shard count. The same in every process and Python version."""
    digest = hashlib.blake2b(_key_bytes(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "hqdb.distributed needs Ray, which is not installed: pip install -e '.[distributed]'", name="ray"
        ) from e
    return ray


# ------------------------------------------------------------------------------------------
# The shard server (a Ray actor; also usable in-process)
# ------------------------------------------------------------------------------------------
class ShardServer:
    """One shard: an hqdb connection to the shard's file and its collection (whose code cache
    stays warm between calls). Ray runs it as an actor; every method takes and returns plain
    values (lists, dicts, numpy arrays)."""

    def __init__(self, path: str, name: str, threads: int = 1):
        import hqdb

        self.path = path
        self.db = hqdb.connect(path, threads=threads)
        self.coll = self.db.collection(name)
        if self.db.hq.table(self.coll.name).opts.rerank:
            raise ShardError(f"{path}: {name} keeps vectors for an exact re-rank, which shards do not merge")

    def describe(self) -> dict:
        c = self.coll
        row = self.db.execute(f"SELECT coalesce(max(rowid), 0) FROM {c._table().rows_table}").fetchone()
        top = row[0] if row else 0
        return {
            "pid": os.getpid(),
            "columns": dict(c.columns),
            "modalities": list(c.modalities),
            "key": c.key,
            "model": c.model_name,
            "count": len(c),
            "books": self.db.hq.table(c.name).opts.books,
            "max_rowid": int(top),
        }

    def pid(self) -> int:
        return os.getpid()

    def count(self) -> int:
        return len(self.coll)

    def present(self, rowids: Sequence[int]) -> list[int]:
        """Those of ``rowids`` that this shard holds."""
        from ..collections import _hit_columns

        return sorted(_hit_columns(self.coll, sorted({int(r) for r in rowids})))

    def insert(self, items: list[dict], retry: bool = False) -> list[int]:
        """Insert items whose ``rowid`` is set (all or nothing). On a retry, rows that the failed
        attempt committed are already here (one transaction: all of them or none) and are skipped."""
        if retry:
            have = set(self.present([it["rowid"] for it in items]))
            items = [it for it in items if it["rowid"] not in have]
        return self.coll.insert_all(items, progress=False) if items else []

    def insert_codes(self, rowids: np.ndarray, codes: dict, metadata: dict, retry: bool = False) -> int:
        """Insert pre-encoded rows (:func:`hqdb.distributed.encode_into_shards`): ``codes`` maps
        modality → (packed bit codes, quantization codes). Rows already present are skipped
        (a re-run after a crash); returns how many were written."""
        from ..bulk import _write_rows

        rowids = np.asarray(rowids, dtype=np.int64)
        have = set(self.present(rowids.tolist()))
        keep = np.array([int(r) not in have for r in rowids], dtype=bool)
        if not keep.any():
            return 0
        t = self.db.hq.table(self.coll.name)
        names = [c.name for c in t.sets]
        by_set = {
            names.index(m): (np.asarray(b)[keep], None if q is None else np.asarray(q)[keep])
            for m, (b, q) in codes.items()
        }
        meta = {c: [v for v, k in zip(vals, keep) if k] for c, vals in metadata.items()}
        _write_rows(self.db, t, int(keep.sum()), rowids[keep], meta, by_set)
        return int(keep.sum())

    def delete(self, rowids: Sequence[int]) -> int:
        return self.coll.delete([int(r) for r in rowids])

    def get(self, rowids: Sequence[int]) -> dict[int, dict]:
        from ..collections import _hit_columns

        return _hit_columns(self.coll, sorted({int(r) for r in rowids}))

    def search(self, image, text, target, k: int, candidates, mode, where, where_args, many: bool) -> list:
        """Per query (rowids int64, distances float64, hamming int32) of this shard's part of the
        merge: its top k ('aqd', 'hamming'), or its whole two-stage shortlist with each row's AQD
        and Hamming distances. Queries are checked as :meth:`hqdb.Collection.search` checks them."""
        from ..engine.catalog import quote_ident
        from ..engine.query import encode_query
        from ..txn import read_transaction

        coll = self.coll
        source, values, target = coll._query(image, text, target)
        if not many:
            values = [values]
        elif isinstance(values, str):
            raise CollectionError(f"{coll.name}.search_many: give a list of queries, not one string")
        encoded = [coll.query_value(source, v, f" (query {i})" if many else "") for i, v in enumerate(values)]
        table = self.db.hq.table(coll.name)
        try:
            params = table.params(k, candidates, mode)
            if params.run_mode == "two_stage":  # the whole shortlist, ranked by AQD
                c = max(params.candidates, params.k)
                params = table.params(min(c, 65536), c, "two_stage")
                if c > 65536:
                    raise CollectionError(
                        f"{coll.name}.search: a sharded two-stage search takes at most 65536 candidates"
                    )
        except HqdbError as e:
            if isinstance(e, CollectionError):
                raise
            raise CollectionError(f"{coll.name}.search: {e}") from None
        if where is None:
            if where_args:
                raise CollectionError(f"{coll.name}.search: where_args given without a where condition")
            names = [c.name for c in table.sets]
            with read_transaction(self.db):
                r, d, h = table.search_many(
                    names.index(target), [encode_query(source, v) for v in encoded], params, threads=self.db.hq.threads
                )
            return [(r[j], d[j].astype(np.float64), h[j].astype(np.int32)) for j in range(len(encoded))]
        matching = coll._matching(where, "search")
        args = coll._where_args(where, where_args, matching, "search")
        q = quote_ident(coll.name)
        sql = (
            f"SELECT rowid, distance, hamming FROM {q} WHERE hq_match({q}.{quote_ident(target)}, hq_query(?, ?)) "
            f"AND k = ? AND candidates = ? AND mode = ? AND rowid IN ({matching} UNION ALL SELECT NULL)"
        )
        out = []
        with read_transaction(self.db):
            for v in encoded:
                rows = self.db.execute(sql, (source, v, params.k, params.candidates, params.run_mode, *args)).fetchall()
                out.append(
                    (
                        np.array([r[0] for r in rows], dtype=np.int64),
                        np.array([r[1] for r in rows], dtype=np.float64),
                        np.array([r[2] for r in rows], dtype=np.int32),
                    )
                )
        return out

    def run_mode(self, mode) -> str:
        return self.db.hq.table(self.coll.name).params(1, None, mode).run_mode

    def close(self) -> None:
        self.db.close()


# ------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------
def _manifest_path(directory, name: str) -> Path:
    return Path(directory) / MANIFEST.format(name=name)


def _merge(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], k: int, shortlist: int | None):
    """(rowids, distances, hamming, shard) of the global top k from the shards' parts: ranked by
    (distance, hamming, rowid), as one file ranks them; for two-stage, first cut to the
    ``shortlist`` smallest (hamming, rowid)."""
    r = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    h = np.concatenate([p[2] for p in parts])
    s = np.concatenate([p[3] for p in parts])
    if shortlist is not None and len(r) > shortlist:
        # The rows of the shortlist smallest (hamming, rowid), without sorting them all: every row
        # below the cut distance, then the smallest rowids among those at it.
        cut = np.partition(h, shortlist - 1)[shortlist - 1]
        below = np.flatnonzero(h < cut)
        at = np.flatnonzero(h == cut)
        at = at[np.argsort(r[at], kind="stable")[: shortlist - len(below)]]
        keep = np.concatenate([below, at])
        r, d, h, s = r[keep], d[keep], h[keep], s[keep]
    order = np.lexsort((r, h, d))[:k]
    return r[order], d[order], h[order], s[order]


class ShardedCollection:
    """A collection split over several hqdb files (shards), served by one Ray actor each.

    Create one with :meth:`create` (a directory of shard files plus a small JSON manifest), open
    it again with ``ShardedCollection(directory, name)``. Needs a running Ray (``ray.init()``;
    a local one is started if none is). ``insert_all`` gives each item a global id (its rowid in
    its shard) and routes it by :func:`shard_of`; ``search`` / ``search_many`` take the arguments
    of :meth:`hqdb.Collection.search` and return :class:`hqdb.Hits` identical to those of one file
    holding every row with the same rowids."""

    def __init__(
        self,
        directory,
        name: str,
        *,
        threads: int = 1,
        max_restarts: int = 3,
        restart_timeout: float = 120.0,
        actor_options=None,
    ):
        path = _manifest_path(directory, name)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ShardError(f"no sharded collection {name!r} in {os.fspath(directory)!r} (no {path.name})") from None
        except (OSError, ValueError) as e:
            raise ShardError(f"{path}: not a sharded-collection manifest: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not manifest.get("files"):
            raise ShardError(f"{path}: not a sharded-collection manifest (format {FORMAT})")
        self.directory = Path(directory)
        self.name = name
        self.restart_timeout = float(restart_timeout)
        self.retries = 0  # calls sent again after their shard's actor died
        self.paths = [str(self.directory / f) for f in manifest["files"]]
        self.routing = manifest.get("routing", "rowid")
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        options = {"num_cpus": 0, "max_restarts": max_restarts, "max_task_retries": 0, **(actor_options or {})}
        server = ray.remote(ShardServer).options(**options)
        self._actors = [server.remote(p, name, threads) for p in self.paths]
        info = self._fanout({i: ("describe", (), {}) for i in range(len(self.paths))})
        first = info[0]
        for i, other in info.items():
            if (other["columns"], other["modalities"], other["key"]) != (
                first["columns"],
                first["modalities"],
                first["key"],
            ):
                raise ShardError(f"{self.paths[i]}: {name} differs from shard 0 (columns, inputs or key)")
        self.columns: dict[str, str] = first["columns"]
        self.modalities: tuple[str, ...] = tuple(first["modalities"])
        self.key: str | None = first["key"]
        self.model_name: str = first["model"]
        self.books: int = first["books"]
        self._next = max(v["max_rowid"] for v in info.values()) + 1
        self._run_mode: dict = {}  # mode asked -> mode run (the model's own when None)

    # -------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        directory,
        name: str,
        model,
        *,
        shards: int,
        columns=None,
        key: str | None = None,
        model_name: str = "model",
        **options,
    ) -> ShardedCollection:
        """Create ``shards`` hqdb files in ``directory`` (made if missing), each holding ``model``
        (a :class:`hqdb.model.TrainedModel`) as ``model_name`` and an empty collection ``name``
        with ``columns`` and ``key`` as :meth:`hqdb.Connection.create_collection` takes them;
        items are routed by ``key`` when given, else by their global id. Returns it opened."""
        import hqdb

        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 65536:
            raise CollectionError(f"shards must be an integer in 1..65536, got {shards!r}")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise CollectionError(f"a sharded collection's name must be a plain file-name-safe string, got {name!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = _manifest_path(directory, name)
        if manifest.exists():
            raise CollectionError(
                f"{manifest} already exists: open it with ShardedCollection({str(directory)!r}, {name!r})"
            )
        files = [f"{name}.shard{i:05d}-of-{shards:05d}.hqdb" for i in range(shards)]
        for f in files:
            if (directory / f).exists():
                raise CollectionError(f"{directory / f} already exists")
        for f in files:
            db = hqdb.connect(str(directory / f))
            try:
                hqdb.save_model(db, model_name, model)
                db.create_collection(name, model_name, columns, key=key)
            finally:
                db.close()
        body = {"format": FORMAT, "name": name, "files": files, "routing": key or "rowid", "hash": "blake2b-8"}
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, manifest)
        return cls(directory, name, **options)

    # -------------------------------------------------------------- calls with one retry
    def _fanout(self, calls: Mapping[int, tuple[str, tuple, dict]], done: dict | None = None) -> dict[int, Any]:
        """Run ``{shard: (method, args, kwargs)}`` on the shards' actors in parallel; a call whose
        actor died is sent again once (with ``retry=True`` for writes), after Ray restarted the
        actor from its file. The first error a shard raised is re-raised as it was."""
        ray = _ray()
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        def submit(i, again):
            method, args, kwargs = calls[i]
            if again and method in ("insert", "insert_codes"):
                kwargs = {**kwargs, "retry": True}
            return getattr(self._actors[i], method).remote(*args, **kwargs)

        refs = {i: submit(i, False) for i in calls}
        out: dict[int, Any] = {} if done is None else done  # the calls that succeeded, even if another failed
        failed: dict[int, BaseException] = {}
        errors: list[BaseException] = []
        for attempt in (0, 1):
            for i, ref in refs.items():
                try:
                    out[i] = ray.get(ref)
                except RayTaskError as e:  # the shard's own error (bad where, duplicate key, ...)
                    cause = getattr(e, "cause", None)
                    errors.append(cause if isinstance(cause, BaseException) else e)
                except (RayActorError, ActorUnavailableError) as e:
                    failed[i] = e
            if errors:
                raise errors[0]
            if not failed or attempt:
                break
            self.retries += len(failed)
            alive = {i for i in failed if self._await_restart(i)}
            refs = {i: submit(i, True) for i in alive}
            failed = {i: err for i, err in failed.items() if i not in alive}
        if failed:
            i, err = next(iter(failed.items()))
            raise ShardError(f"shard {i} ({self.paths[i]}) failed twice: {err}") from None
        return out

    def _await_restart(self, i: int) -> bool:
        """Wait (up to ``restart_timeout`` seconds) until Ray has restarted shard ``i``'s actor;
        False if it is gone for good (restarts exhausted) or does not come back in time."""
        ray = _ray()
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + self.restart_timeout
        while time.monotonic() < deadline:
            try:
                ray.get(self._actors[i].pid.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                return True
            except ActorUnavailableError:  # restarting: calls fail until it is up again
                time.sleep(0.2)
            except (RayActorError, ray.exceptions.GetTimeoutError):
                return False
        return False

    def _refresh_next(self) -> None:
        """The next free global id, from the shards' largest rowids (after writes by others)."""
        info = self._fanout({i: ("describe", (), {}) for i in range(self.shards)})
        self._next = max(self._next, max(v["max_rowid"] for v in info.values()) + 1)

    def _call(self, i: int, method: str, *args, **kwargs):
        return self._fanout({i: (method, args, kwargs)})[i]

    # -------------------------------------------------------------- reading
    @property
    def shards(self) -> int:
        return len(self._actors)

    def __len__(self) -> int:
        return sum(self._fanout({i: ("count", (), {}) for i in range(self.shards)}).values())

    def counts(self) -> list[int]:
        """Rows per shard."""
        got = self._fanout({i: ("count", (), {}) for i in range(self.shards)})
        return [got[i] for i in range(self.shards)]

    def get(self, rowid: int) -> dict:
        """The row with global id ``rowid`` (``rowid`` and columns); NotFoundError if absent."""
        from ..errors import NotFoundError

        for rows in self._fanout({i: ("get", ([rowid],), {}) for i in range(self.shards)}).values():
            if int(rowid) in rows:
                return {"rowid": int(rowid), **rows[int(rowid)]}
        raise NotFoundError(f"{self.name} has no row with rowid {rowid!r}")

    def actor(self, shard: int):
        """The Ray actor handle serving ``shard``."""
        return self._actors[shard]

    # -------------------------------------------------------------- writing
    def _route(self, item: dict) -> int:
        if self.key is not None:
            if item.get(self.key) is None:
                raise CollectionError(f"{self.name}: every item needs its key {self.key!r} (items are routed by it)")
            return shard_of(item[self.key], self.shards)
        return shard_of(int(item["rowid"]), self.shards)

    def insert(self, item) -> int:
        return self.insert_all([item])[0]

    def insert_all(self, items: Iterable) -> list[int]:
        """Insert items (dicts or typed objects, as :meth:`hqdb.Collection.insert_all` takes them);
        return their global ids. Items without a ``rowid`` get the next free ids in order. Each
        shard's part is one transaction; if a shard refuses its part, the parts other shards
        committed are deleted again before the error is raised (one writing client at a time:
        ids are assigned by the client)."""
        from ..collections import _as_dict

        rows = [_as_dict(self.name, it, i) for i, it in enumerate(items)]
        if not rows:
            return []
        ids: list[int] = []
        top = self._next - 1
        for it in rows:
            r = it.get("rowid")
            if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer))):
                raise CollectionError(f"{self.name}.rowid: expected int, got {type(r).__name__}")
            top = int(r) if r is not None and int(r) > top else top + (r is None)
            ids.append(top if r is None else int(r))
        if len(set(ids)) != len(ids):
            raise CollectionError(f"{self.name}: the same rowid appears twice among the items")
        given = [r for it, r in zip(rows, ids) if it.get("rowid") is not None]
        if given and self.key is not None:  # ids are routed by key: any shard may hold a given id
            taken = [
                r for v in self._fanout({i: ("present", (given,), {}) for i in range(self.shards)}).values() for r in v
            ]
            if taken:
                raise CollectionError(f"{self.name}: rowid {taken[0]} already exists")
        parts: dict[int, list[dict]] = {}
        for it, r in zip(rows, ids):
            it = {**it, "rowid": r}
            parts.setdefault(self._route(it), []).append(it)
        done: dict[int, Any] = {}
        try:
            self._fanout({i: ("insert", (part,), {}) for i, part in parts.items()}, done)
        except BaseException:
            # Undo the parts that committed (each shard's part is all or nothing).
            undo: dict[int, tuple[str, tuple, dict]] = {
                i: ("delete", ([it["rowid"] for it in parts[i]],), {}) for i in done
            }
            if undo:
                self._fanout(undo)
            raise
        self._next = max(self._next, max(ids) + 1)
        return ids

    def delete(self, rowids) -> int:
        """Delete rows by global id; return how many existed."""
        ids = [int(rowids)] if isinstance(rowids, (int, np.integer)) else [int(r) for r in rowids]
        return sum(self._fanout({i: ("delete", (ids,), {}) for i in range(self.shards)}).values())

    # -------------------------------------------------------------- search
    def _search(self, image, text, target, k, candidates, where, where_args, mode, many):
        from ..collections import Hit, Hits

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CollectionError(f"{self.name}.search: k must be a positive integer, got {k!r}")
        if where_args and not isinstance(where_args, (list, tuple)):
            raise CollectionError(f"{self.name}.search: where_args must be a list of values for the '?' in where")
        args = (image, text, target, k, candidates, mode, where, tuple(where_args), many)
        got = self._fanout({i: ("search", args, {}) for i in range(self.shards)})
        n_queries = len(got[0])
        # 'two_stage' shards return whole shortlists: the global one is the smallest (hamming, id).
        two_stage = self._two_stage(mode, candidates, k)
        merged = []
        for j in range(n_queries):
            parts = [(*got[i][j], np.full(len(got[i][j][0]), i)) for i in range(self.shards)]
            merged.append(_merge(parts, k, two_stage))
        wanted: dict[int, list[int]] = {}
        for r, _, _, s in merged:
            for rowid, shard in zip(r.tolist(), s.tolist()):
                wanted.setdefault(shard, []).append(rowid)
        values: dict[int, dict] = {}
        if wanted:
            for rows in self._fanout({i: ("get", (ids,), {}) for i, ids in wanted.items()}).values():
                values.update(rows)
        return [
            Hits(
                (
                    Hit(int(rr), float(dd), int(hh), dict(values[int(rr)]))
                    for rr, dd, hh in zip(r.tolist(), d.tolist(), h.tolist())
                    if int(rr) in values  # deleted between the two rounds: left out
                ),
                self.columns,
            )
            for r, d, h, _ in merged
        ]

    def _two_stage(self, mode, candidates, k) -> int | None:
        """The shortlist size when this search runs two-stage, else None."""
        if mode not in self._run_mode:
            self._run_mode[mode] = self._call(0, "run_mode", mode)
        if self._run_mode[mode] != "two_stage":
            return None
        from ..engine.query import default_candidates

        return max(default_candidates(k) if candidates is None else int(candidates), k)

    def search(
        self,
        image=None,
        text=None,
        *,
        target: str | None = None,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
    ):
        """:meth:`hqdb.Collection.search` over every shard: the k nearest items, best first."""
        return self._search(image, text, target, k, candidates, where, where_args, mode, False)[0]

    def search_many(
        self,
        image=None,
        text=None,
        *,
        target: str | None = None,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
    ):
        """:meth:`hqdb.Collection.search_many` over every shard: one Hits per query, in order."""
        return self._search(image, text, target, k, candidates, where, where_args, mode, True)

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """End the shard actors (their connections close with them)."""
        ray = _ray()
        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors = []

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedCollection({self.name!r}, shards={len(self.paths)}, model={self.model_name!r})"
