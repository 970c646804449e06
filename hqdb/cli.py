"""The ``hqdb`` command line: demo, train, index, search, eval, bench, models, info.

Every subcommand has ``--help``; those that print results take ``--json`` for scripts. A user
mistake (bad file, unknown model, wrong shape, ...) prints one line ``hqdb: error: ...`` on
stderr and exits with status 1 (argparse's usage errors exit with 2); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from .kernels import MODES
from .model import DEFAULT_CLUSTERS, METHODS
from .tabular import column_type, parse_scalar

EXIT_USER_ERROR = 1
EXIT_INCONSISTENT = 3  # `hqdb check` found problems (2 is argparse's bad command line)


class UserError(Exception):
    """A mistake in the command's input, reported in one line."""


# ------------------------------------------------------------------------------------------
# demo / train / models
# ------------------------------------------------------------------------------------------
def _demo(args) -> int:
    if args.raw:
        from .demo import run

        run(args.db, seed=args.seed)
    else:
        from .demo import run_model

        run_model(args.db, data=args.data, bits=args.bits, seed=args.seed)
    return 0


def _check_destination(path: str) -> None:
    """Fail before a long job (training) if its result could not be stored in ``path``."""
    if path == ":memory:":
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"cannot store anything in {path!r}: the directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"cannot store anything in {path!r}: it is a directory")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise UserError(f"cannot store anything in {path!r}: {target!r} is not writable")


def _train(args) -> int:
    import hqdb

    from .model.store import check_name

    check_name(args.name)
    _check_destination(args.db)
    if not args.replace and os.path.exists(args.db):  # fail before training, not after
        names = [m["name"] for m in hqdb.list_models(_connect(args.db, readonly=True))]
        if args.name in names:
            raise UserError(f"{args.db} already has a model named {args.name!r} (--replace overwrites it)")
    model = hqdb.train(
        args.data,
        method=args.method,
        bits=args.bits,
        books=args.books,
        codewords=args.codewords,
        text_key=args.text_key,
        epochs=args.epochs,
        val_fraction=args.val_fraction,
        refit=args.refit,
        seed=args.seed,
        label_free=args.label_free,
        clusters=args.clusters,
        progress=_show_progress(args),
        **_image_options(args),
    )
    db = _connect(args.db)
    hqdb.save_model(db, args.name, model, replace=args.replace)
    metrics = model.config.get("metrics")
    if args.json:
        print(
            json.dumps(
                {
                    "name": args.name,
                    "db": args.db,
                    "method": args.method,
                    "bits": model.bits,
                    "books": model.books,
                    "codewords": model.codewords,
                    "metrics": metrics,
                }
            )
        )
        return 0
    print(f"saved model {args.name!r} ({args.method}, {model.bits} bits, {model.books}x{model.codewords}) in {args.db}")
    if metrics and not args.quiet:
        val = metrics.get("validation") or {}
        if val:
            print("validation: " + json.dumps(val))
    return 0


def _image_options(args) -> dict:
    """hqdb.train's image arguments from --backbone, --weights, --image-size, --captions."""
    if os.path.isdir(args.data) and not args.backbone:
        raise UserError(f"{args.data!r} is a folder of images: give --backbone timm:NAME and --weights FILE")
    if not args.backbone and (args.weights or args.image_size or args.captions):
        raise UserError("--weights, --image-size and --captions go with --backbone")
    text = _text_options(args)
    if not args.backbone:
        return text
    return {
        "image_featurizer": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "captions": args.captions,
        **text,
    }


def _text_options(args) -> dict:
    """hqdb.train's text featurizer from --text-featurizer / --text-weights (default: tf-idf)."""
    if args.text_weights and not (args.text_featurizer or "").startswith("open_clip:"):
        raise UserError("--text-weights goes with --text-featurizer open_clip:NAME")
    out: dict = {}
    if args.text_featurizer:
        out["text_featurizer"] = args.text_featurizer
    if args.text_weights:
        out["text_weights"] = args.text_weights
    return out


def _models(args) -> int:
    """``hqdb models [list|rm NAME|rename OLD NEW] --db DB``."""
    wanted = {"list": 0, "rm": 1, "rename": 2}[args.action]
    if len(args.names) != wanted:
        usage = {"list": "hqdb models list --db DB", "rm": "hqdb models rm NAME --db DB",
                 "rename": "hqdb models rename OLD NEW --db DB"}[args.action]  # fmt: skip
        raise UserError(f"models {args.action} takes {wanted} name(s), got {len(args.names)}: {usage}")
    if args.force and args.action != "rm":
        raise UserError("--force goes with models rm")
    if args.action == "rm":
        return _models_rm(args)
    if args.action == "rename":
        return _models_rename(args)
    return _models_list(args)


def _models_list(args) -> int:
    import hqdb

    from .engine.catalog import tables_using_model

    db = _open(args.db, readonly=True)
    models = hqdb.list_models(db)
    for m in models:
        m["tables"] = tables_using_model(db, m["name"])
    if args.json:
        print(json.dumps(models, indent=2))
    elif not models:
        print(f"no models in {args.db}")
    else:
        rows = [
            [
                m["name"],
                m.get("method") or "?",
                str(m.get("bits")),
                f"{m.get('books')}x{m.get('codewords')}",
                ",".join(m.get("modalities") or []),
                ",".join(m["tables"]) or "-",
                m["created_at"],
            ]
            for m in models
        ]
        header = ["name", "method", "bits", "books", "modalities", "tables", "created"]
        print(_table(header, rows, right={2}))
    return 0


def _models_rm(args) -> int:
    import hqdb

    from .model.store import check_name

    (name,) = args.names
    check_name(name)
    db = _open(args.db)
    orphaned = hqdb.delete_model(db, name, force=args.force)
    if args.json:
        print(json.dumps({"deleted": name, "tables_left_without_model": orphaned}))
        return 0
    print(f"deleted model {name!r} from {args.db}")
    if orphaned:
        print(
            f"warning: hq table(s) {', '.join(orphaned)} used it: they keep their rows but cannot insert or "
            f"search until a model named {name!r} of the same shape is saved again (or hqdb drop them)",
            file=sys.stderr,
        )
    return 0


def _models_rename(args) -> int:
    import hqdb

    from .model.store import check_name

    old, new = args.names
    check_name(old)
    check_name(new)
    db = _open(args.db)
    hqdb.rename_model(db, old, new)
    if args.json:
        print(json.dumps({"renamed": old, "to": new}))
    else:
        print(f"renamed model {old!r} to {new!r} in {args.db}")
    return 0


def _table(header: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """Rows of cells as aligned text columns (columns in ``right`` right-aligned), header first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


_OPEN: list = []  # connections of the running command, closed when it ends


def _free_table_name(db, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ...: a table name the database does not use yet (nor
    any of its shadow tables' names), so a command's scratch table never replaces a user's."""
    taken = {str(r[0]).lower() for r in db.execute("SELECT name FROM main.sqlite_master")}
    name, i = base, 1
    while name.lower() in taken or any(t.startswith(name.lower() + "_") for t in taken):
        i += 1
        name = f"{base}_{i}"
    return name


def _sql_string(value: str) -> str:
    """``value`` as an SQL string literal (embedded quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def _connect(path: str, *, readonly: bool = False):
    import hqdb

    conn = hqdb.connect(path, readonly=readonly)
    _OPEN.append(conn)
    return conn


def _open(path: str, *, readonly: bool = False):
    """An hqdb connection to an existing database file (a typo must not create an empty one)."""
    if path != ":memory:" and not os.path.exists(path):
        raise UserError(f"no database file {path!r}")
    return _connect(path, readonly=readonly)


# ------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------
def table_info(db) -> list[dict]:
    """One entry per hq table: kind, model, modalities, rows, code bytes per item and
    modality, and the pages the table's storage takes in the file (``dbstat``)."""
    from .engine.catalog import table_stats

    return table_stats(db)


def _info(args) -> int:
    import hqdb

    info = hqdb.info()
    if args.db:
        db = _open(args.db, readonly=True)
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        info["database"] = {
            "path": args.db,
            "bytes": pages * page_size,  # including what still sits in the WAL
            "tables": table_info(db),
            "models": hqdb.list_models(db),
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    backend = info.get("backend")
    print(
        f"hqdb {info['hqdb']} (schema {info['schema_version']}), SQLite {info['sqlite']}, "
        f"sqlite-vec {info['sqlite_vec']}"
    )
    print(
        f"kernels: {backend}"
        + (f" ({info['fallback_reason']})" if info.get("fallback_reason") else "")
        + (f", Hamming {info['hamming_impl']}" if info.get("hamming_impl") else "")
        + f", up to {info.get('max_threads', 1)} threads"
    )
    if args.db:
        d = info["database"]
        print(f"\n{args.db}: {d['bytes']:,} bytes, {len(d['tables'])} hq table(s), {len(d['models'])} model(s)")
        if d["tables"]:
            print(
                f"  {'table':<20} {'kind':<10} {'model':<12} {'rows':>9} {'code B/item':>11} "
                f"{'disk B/row':>10}  modalities"
            )
            for t in d["tables"]:
                print(
                    f"  {t['table']:<20} {t['kind']:<10} {t['model'] or '-':<12} {t['rows']:>9,} "
                    f"{t['code_bytes_per_item']:>11} {t['disk_bytes_per_row'] or '-':>10}  {','.join(t['modalities'])}"
                )
    return 0


# ------------------------------------------------------------------------------------------
# index
# ------------------------------------------------------------------------------------------
def _read_items(path: str, modalities, data_keys: dict) -> tuple[list[dict], dict[str, type]]:
    """Items of an .npz (one array per field, N rows each) or a CSV (one row per item) as dicts,
    and the Python type of each metadata field found."""
    if not os.path.exists(path):
        raise UserError(f"no such file {path!r}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        inputs = {m: data_keys.get(m, m) for m in modalities if data_keys.get(m, m) in data}
        if not inputs:
            raise UserError(
                f"{path} has none of the model's inputs {[data_keys.get(m, m) for m in modalities]} "
                f"(arrays: {sorted(data)})"
            )
        n = len(data[next(iter(inputs.values()))])
        meta = {
            k: v
            for k, v in data.items()
            if k not in inputs.values() and v.ndim == 1 and len(v) == n and v.dtype.kind in "iufUb"
        }
        types: dict[str, type] = {
            k: (str if v.dtype.kind == "U" else float if v.dtype.kind == "f" else int) for k, v in meta.items()
        }
        items: list[dict] = []
        for i in range(n):
            item = {
                m: (str(data[key][i]) if data[key].dtype.kind in "UO" else data[key][i]) for m, key in inputs.items()
            }
            item.update({k: v[i].item() for k, v in meta.items()})
            items.append(item)
        return items, types
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise UserError(f"{path} has no rows")
        for line, r in enumerate(rows, start=2):
            if None in r or None in r.values():
                raise UserError(
                    f"{path} line {line}: the number of fields differs from the header "
                    "(quote cells that contain commas, such as JSON lists)"
                )
        items, types = [], {}
        fields = [k for k in rows[0] if k not in modalities]
        for k in fields:
            types[k] = column_type(r[k] for r in rows if r[k] != "")
        for line, r in enumerate(rows, start=2):
            item = {}
            for m in modalities:
                v = r.get(m, "")
                if v:
                    item[m] = _parse_features(v, path, line, m)
            for k in fields:
                v = r[k]
                item[k] = None if v == "" else types[k](v) if types[k] is not str else v
            items.append(item)
        return items, types
    raise UserError(f"{path}: expected an .npz or .csv file")


def _parse_features(value: str, path: str, line: int, modality: str):
    """A CSV cell of a modality: a JSON list or space-separated numbers are features; other text is raw text."""
    text = value.strip()
    try:
        if text.startswith("["):
            return [float(x) for x in json.loads(text)]
        parts = text.split()
        if parts and all(parse_scalar(p) is not p for p in parts) and len(parts) > 1:
            return [float(p) for p in parts]
    except (ValueError, TypeError):
        raise UserError(f"{path} line {line}: {modality} is neither a list of numbers nor text") from None
    return value


def _index(args) -> int:
    import hqdb

    if os.path.isdir(args.data):
        return _index_folder(args)
    if args.backbone or args.weights or args.captions:
        raise UserError("--backbone, --weights and --captions go with a folder of images (hqdb index DIR)")
    db = _open(args.db)
    if args.collection in db.collections():
        coll = db.collection(args.collection)
        if args.model and args.model != coll.model_name:
            raise UserError(f"collection {coll.name!r} uses model {coll.model_name!r}, not {args.model!r}")
        created = False
    else:
        if not args.model:
            raise UserError(f"no collection {args.collection!r} in {args.db}: pass --model to create it")
        created = True
        coll = None
    model = hqdb.load_model(db, args.model or coll.model_name)
    items, types = _read_items(args.data, model.modalities, model.config.get("data_keys", {}))
    if args.columns is not None:
        wanted = [c for c in args.columns.split(",") if c]
        missing = [c for c in wanted if c not in types]
        if missing:
            raise UserError(f"{args.data} has no field(s) {missing} (fields: {sorted(types)})")
        types = {c: types[c] for c in wanted}
    t0 = time.perf_counter()
    # One write transaction, started with BEGIN IMMEDIATE (so a concurrent `hqdb index` waits for
    # the lock instead of failing): a new collection exists only if its items went in.
    with db.transaction():
        if created and args.collection in db.collections():  # another run created it meanwhile
            coll = db.collection(args.collection)
            if coll.model_name != args.model:
                raise UserError(f"collection {coll.name!r} uses model {coll.model_name!r}, not {args.model!r}")
            created = False
        if created:
            coll = db.create_collection(args.collection, model=args.model, columns=types)
        keep = set(coll.columns) | set(coll.modalities)
        items = [{k: v for k, v in it.items() if k in keep} for it in items]
        rowids = coll.insert_all(items, batch_size=args.batch_size, progress=_show_progress(args))
    seconds = time.perf_counter() - t0
    result = {
        "collection": coll.name,
        "model": coll.model_name,
        "created": created,
        "inserted": len(rowids),
        "rows": len(coll),
        "columns": coll.columns,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"indexed {len(rowids)} items into {'new ' if created else ''}collection {coll.name!r} "
            f"(model {coll.model_name!r}, columns {', '.join(coll.columns) or 'none'}) in {seconds:.1f}s; "
            f"{result['rows']} rows"
        )
    return 0


FOLDER_COLUMNS = ("file", "caption")  # a folder collection's key (path relative to DIR) and caption


def _folder_items(args) -> tuple[list[dict], dict[str, type]]:
    from .model.images import read_folder

    items, types = read_folder(args.data, args.captions)
    if not items:
        raise UserError(f"{args.data!r} has no image files ({', '.join(_image_suffixes())})")
    clash = [c for c in types if c.lower() in ("file", "caption", "image", "text", "rowid")]
    if clash:
        raise UserError(f"captions column(s) {clash} clash with the collection's own (file, caption, image, text)")
    return items, types


def _image_suffixes() -> tuple[str, ...]:
    from .model.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _folder_model(args, db, items: list[dict]):
    """(model name, model, features already computed {file: vector}) for a folder: the
    collection's model, the stored model --model, or one trained from the folder now."""
    import hqdb

    if args.collection in db.collections():
        coll = db.collection(args.collection)
        if args.model and args.model != coll.model_name:
            raise UserError(f"collection {coll.name!r} uses model {coll.model_name!r}, not {args.model!r}")
        return coll.model_name, _same_backbone(args, coll.model_name, coll.model), {}
    name = args.model or args.collection
    if name in [m["name"] for m in hqdb.list_models(db)]:
        return name, _same_backbone(args, name, hqdb.load_model(db, name)), {}
    if not args.backbone:
        raise UserError(
            f"{args.db} has no model {name!r}: give --backbone timm:NAME --weights FILE to train one from the folder"
        )
    from .model.images import ImageFeaturizer
    from .model.store import check_name

    check_name(name)
    captioned = [it for it in items if it["caption"]]
    if len(captioned) < 2:
        raise UserError(f"training a model from {args.data!r} needs captioned images: {len(captioned)} have captions")
    fz = ImageFeaturizer.create(args.backbone, args.weights, image_size=args.image_size)
    bar = _bar(len(captioned), "featurize", _show_progress(args), unit="image")
    try:
        feats = fz.transform([it["path"] for it in captioned], progress=bar.update)
    finally:
        bar.close()
    print(f"training model {name!r} on {len(captioned)} captioned images of {args.data}", file=sys.stderr)
    model = hqdb.train(
        {"image": feats, "text": [it["caption"] for it in captioned]},
        image_featurizer=fz,
        weights=args.weights,
        bits=args.bits,
        epochs=args.epochs,
        seed=args.seed,
        clusters=args.clusters,
        progress=_show_progress(args),
        **_text_options(args),
    )
    hqdb.save_model(db, name, model)
    return name, model, {it["file"]: f for it, f in zip(captioned, feats)}


def _same_backbone(args, name: str, model):
    """An existing model, refused when --backbone names another backbone than its own."""
    if args.backbone:
        from .model.images import parse_backbone

        library, backbone = parse_backbone(args.backbone)
        state = model.config["featurizers"].get("image") or {}
        if (state.get("library"), state.get("backbone")) != (library, backbone):
            have = f"{state['library']}:{state['backbone']}" if state.get("backbone") else "no backbone"
            raise UserError(f"model {name!r} already exists with {have}, not {args.backbone} (drop --backbone)")
    return model


def _caption_input(model, caption):
    """A caption as the text input, or None when the text featurizer cannot encode it (no word
    of a tf-idf vocabulary): it is still stored in the caption column."""
    if not caption:
        return None
    if (model.config["featurizers"].get("text") or {}).get("type") != "tfidf":
        return caption  # other text featurizers encode any text with words
    try:
        model.featurize("text", [caption])
    except ValueError:
        return None
    return caption


def _index_folder(args) -> int:
    """Index a folder of images: resumable, one transaction per batch; a file already in the
    collection (its ``file`` key) is skipped, so a rerun after a crash completes the work."""
    if args.columns is not None:
        raise UserError("--columns applies to .npz / .csv data; a folder keeps every captions column")
    items, types = _folder_items(args)
    _check_destination(args.db)
    db = _connect(args.db)
    name, model, known = _folder_model(args, db, items)
    if "image" not in model.modalities or not model.has_image_featurizer("image"):
        raise UserError(
            f"model {name!r} takes image features, not image files: index a folder with a model trained "
            "with a backbone (--backbone)"
        )
    with db.transaction():
        if args.collection in db.collections():
            coll = db.collection(args.collection)
            created = False
        else:
            columns = {"file": str, "caption": str, **types}
            coll = db.create_collection(args.collection, model=name, columns=columns, key="file")
            created = True
    if coll.key != "file":
        raise UserError(f"collection {coll.name!r} has no key column 'file': it was not made by hqdb index DIR")
    from .engine.catalog import quote_ident

    q = quote_ident(coll.name)
    present = {r[0] for r in db.execute(f"SELECT file FROM {q}")}
    todo = [it for it in items if it["file"] not in present]
    batch = min(args.batch_size, 64)  # a crash loses at most one batch of featurizing
    t0 = time.perf_counter()
    inserted = 0
    bar = _bar(len(todo), f"index {coll.name}", _show_progress(args), unit="image")
    try:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            with db.transaction():  # BEGIN IMMEDIATE; a concurrent indexer's files are skipped
                done = {r[0] for r in db.execute(f"SELECT file FROM {q}")} if start else set()
                chunk = [it for it in chunk if it["file"] not in done]
                rows = []
                for it in chunk:
                    row = {c: it.get(c) for c in coll.columns if c in it}
                    row["image"] = known[it["file"]] if it["file"] in known else it["path"]
                    row["text"] = _caption_input(model, it["caption"])
                    rows.append(row)
                coll.insert_all(rows, progress=False)
            inserted += len(chunk)
            bar.update(len(todo[start : start + batch]))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    result = {
        "collection": coll.name,
        "model": name,
        "created": created,
        "inserted": inserted,
        "skipped": len(items) - len(todo),
        "rows": len(coll),
        "columns": coll.columns,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"indexed {inserted} images into {'new ' if created else ''}collection {coll.name!r} (model {name!r}) "
            f"in {seconds:.1f}s; {result['skipped']} already there; {result['rows']} rows"
        )
    return 0


# ------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------
def _load_vector(path: str, row: int, key: str | None) -> np.ndarray:
    if not os.path.exists(path):
        raise UserError(f"no such file {path!r}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise UserError(f"{path} has no array {key!r} (arrays: {sorted(z.files)})")
            x = z[key]
    else:
        x = np.load(path, allow_pickle=False)
    if x.ndim == 2:
        if not 0 <= row < len(x):
            raise UserError(f"--row {row} is out of range: {path} has {len(x)} rows")
        x = x[row]
    return x


def _image_query(args):
    """--image: an .npy / .npz of features, or an image file for a model with an image featurizer."""
    if args.image.endswith((".npy", ".npz")):
        return _load_vector(args.image, args.row, args.key)
    if not os.path.isfile(args.image):
        raise UserError(f"no such file {args.image!r}")
    return os.path.abspath(args.image)


def _search(args) -> int:
    db = _open(args.db, readonly=True)
    coll = db.collection(args.collection)
    if coll.model_name is None:  # a raw collection (hqdb.RawCollection): vectors or codes, no model
        raise UserError(
            f"{coll.name} is a raw hq table (no model to encode --text or --image): search it with "
            "SQL hq_match or from Python, db.collection(name).search(vector=...)"
        )
    if (args.text is None) == (args.image is None):
        raise UserError("give --text 'words' or --image FILE (.npy, or .npz with --key)")
    query = {"text": args.text} if args.text is not None else {"image": _image_query(args)}
    where_args = [parse_scalar(a) for a in args.arg]
    if (
        isinstance(query.get("image"), str)
        and "image" in coll.modalities
        and not coll.model.has_image_featurizer("image")
    ):
        raise UserError(
            f"model {coll.model_name!r} takes image features, not image files: give --image FILE.npy (or .npz)"
        )
    hits = coll.search(
        **query,
        target=args.target,
        k=args.k,
        candidates=args.candidates,
        where=args.where,
        where_args=where_args,
        mode=args.mode,
        hybrid=args.hybrid,
    )
    if args.json:
        print(json.dumps(hits.to_dicts()))
        return 0
    mode = coll.db.hq.table(coll.name).params(args.k, args.candidates, args.mode).run_mode
    print(_hits_table(hits, coll.columns, hamming_distance=mode == "hamming" and not args.hybrid))
    return 0


def _cell(value, sql_type: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and sql_type == "REAL":
        return f"{value:g}"
    return str(value)


def _hits_table(hits, columns: dict[str, str], *, hamming_distance: bool) -> str:
    """Search hits as aligned columns: rowid, distance (an integer when it is the Hamming
    distance, else 4 decimals), hamming, then the collection's columns (numbers right-aligned)."""
    header = ["rowid", "distance", "hamming", *columns]
    rows = [
        [
            str(h.rowid),
            str(round(h.distance)) if hamming_distance else f"{h.distance:.4f}",
            "-" if h.hamming is None else str(int(h.hamming)),  # --hybrid: found by the keywords only
            *(_cell(h.values[c], t) for c, t in columns.items()),
        ]
        for h in hits
    ]
    right = {0, 1, 2} | {3 + i for i, t in enumerate(columns.values()) if t in ("INTEGER", "REAL")}
    return _table(header, rows, right=right)


# ------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------
def _eval(args) -> int:
    import hqdb

    from .evaluate import evaluate

    if args.csv and args.json:
        raise UserError("give --json or --csv, not both")
    if args.plot:
        from .plots import require

        require()  # a missing matplotlib fails before the evaluation, not after
    db = _open(args.db)
    queries, database = (_load_data(p) for p in (args.queries, args.database))
    for name in args.model:
        hqdb.load_model(db, name)  # a missing model fails before any work
    results, curves = [], {}
    bar = _bar(len(args.model) * (2 if args.plot else 1), "eval", not args.quiet and not args.json)
    try:
        for name in args.model:
            table = _free_table_name(db, f"hqdb_eval_{name}".replace("-", "_").replace(".", "_"))
            result = evaluate(
                db,
                name,
                queries,
                database,
                candidates=args.candidates,
                precision_k=args.precision_k,
                table=table,
                keep=bool(args.plot),
            )
            bar.update(1)
            results.append(result)
            if args.plot:
                try:
                    curves[name] = pr_curves(db, table, queries, database)
                finally:
                    db.execute(f'DROP TABLE IF EXISTS "{table}"')
                bar.update(1)
    finally:
        bar.close()
    if args.plot:
        from .plots import eval_figure

        eval_figure(results, curves, args.plot)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return 0
    if args.csv:
        _write_eval_csv(results, sys.stdout)
        return 0
    for result in results:
        print(
            f"model {result['model']}: {result['bits']} bits + {result['books']}x{result['codewords']} "
            f"({result['bytes_per_item']} bytes/item); {result['n_queries']} queries x {result['n_database']} items"
        )
        for direction in ("i2t", "t2i", "harmonic"):
            if direction not in result:
                continue
            for ranking, scores in result[direction].items():
                cells = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
                print(f"  {direction:<8} {ranking:<10} {cells}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


EVAL_CSV_FIELDS = ["model", "method", "bits", "books", "codewords", "bytes_per_item", "n_queries", "n_database",
                   "candidates", "direction", "ranking"]  # fmt: skip


def _write_eval_csv(results: list[dict], out) -> None:
    """``hqdb eval --csv``: one row per model, direction (i2t, t2i, harmonic) and ranking, with
    the model's settings and one column per measure (map@all, map@50, p@k)."""
    rows = []
    for r in results:
        for direction in ("i2t", "t2i", "harmonic"):
            for ranking, scores in (r.get(direction) or {}).items():
                rows.append(
                    ({k: r.get(k) for k in EVAL_CSV_FIELDS} | {"direction": direction, "ranking": ranking}, scores)
                )
    measures = list(dict.fromkeys(k for _, scores in rows for k in scores))
    w = csv.writer(out, lineterminator="\n")
    w.writerow(EVAL_CSV_FIELDS + measures)
    for fields, scores in rows:
        w.writerow([fields[k] for k in EVAL_CSV_FIELDS] + [scores.get(m, "") for m in measures])


def _load_data(path: str) -> dict:
    from .evaluate import load_npz

    if not os.path.exists(path):
        raise UserError(f"no such file {path!r}")
    return load_npz(path)


def pr_curves(db, table: str, queries: dict, database: dict, points: int = 50) -> dict:
    """Precision–recall curves of the search as a user runs it (default candidates, k = all
    items up to the engine's maximum) in both directions, over a table ``evaluate(keep=True)``
    indexed (rowid = database index + 1)."""
    from . import metrics
    from .collections import Collection
    from .engine.query import MAX_K
    from .evaluate import DIRECTIONS, modality_inputs

    coll = Collection(db, table)
    q_in = modality_inputs(coll.model, queries)
    n = len(database["labels"])
    k = min(n, MAX_K)
    out = {}
    for direction, (src, dst) in DIRECTIONS.items():
        if src not in coll.modalities or dst not in coll.modalities:
            continue
        hits = coll.search_many(**{src: q_in[src]}, target=dst, k=k)
        ranking = np.array([h.rowids - 1 for h in hits], dtype=np.int64)
        precision, recall = metrics.precision_recall_curve(queries["labels"], database["labels"], ranking, points)
        out[direction] = {"precision": precision.tolist(), "recall": recall.tolist()}
    return out


# ------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------
def _bench(args) -> int:
    import hqdb

    from . import metrics
    from .collections import Collection
    from .engine.catalog import quote_ident
    from .evaluate import modality_inputs
    from .model.store import check_name

    quiet = args.quiet or args.json
    if args.plot:
        from .plots import require

        require()  # a missing matplotlib fails before training and timing, not after
    if args.db:
        if not (args.model and args.queries and args.database):
            raise UserError("with --db, also give --model, --queries and --database")
        check_name(args.model)
        db = _open(args.db)
        hqdb.load_model(db, args.model)  # a missing model fails before the data is read
        name = args.model
        queries, database = _load_data(args.queries), _load_data(args.database)
    else:
        from . import datasets

        pairs = datasets.synthetic_pairs(args.items + args.n_queries, seed=args.seed)
        queries = {k: v[: args.n_queries] for k, v in pairs.items() if k != "label_names"}
        database = {k: v[args.n_queries :] for k, v in pairs.items() if k != "label_names"}
        if not quiet:
            print(
                f"data: SYNTHETIC paired set from hqdb.datasets ({args.items} items, {args.n_queries} queries); "
                f"training a {args.bits}-bit model",
                file=sys.stderr,
            )
        model = hqdb.train(database, bits=args.bits, epochs=args.epochs, seed=args.seed, progress=_show_progress(args))
        db = _connect(":memory:")
        name = "bench"
        hqdb.save_model(db, name, model)
    table = _free_table_name(db, "hqdb_bench")  # never a user's table: it is dropped at the end
    db.execute(f"CREATE VIRTUAL TABLE {quote_ident(table)} USING hq(model={_sql_string(name)})")
    try:
        coll = Collection(db, table)
        db_in = modality_inputs(coll.model, database)
        q_in = modality_inputs(coll.model, queries)
        n = len(database["labels"])
        items = [{m: (db_in[m][i]) for m in coll.modalities} for i in range(n)]
        coll.insert_all(items, progress=_show_progress(args))
        src, dst = ("image", "text") if args.direction == "i2t" else ("text", "image")
        sql, _ = coll.search_sql(dst, args.k, 1)
        values = [coll.query_value(src, v) for v in q_in[src]]
        cands = sorted({min(max(int(c), args.k), n) for c in args.candidates.split(",")})
        rows = []
        bar = _bar(len(cands), "bench", not quiet, unit="sweep")
        for c in cands:
            times, ranking = [], []
            for v in values:
                t = time.perf_counter()
                found = db.execute(sql, (src, v, args.k, c)).fetchall()
                times.append(time.perf_counter() - t)
                ranking.append([r[0] - 1 for r in found])
            rel = metrics.relevance(queries["labels"], database["labels"], np.array(ranking, dtype=np.int64))
            rows.append(
                {
                    "candidates": c,
                    "p50_ms": 1000 * float(np.median(times)),
                    "mean_ms": 1000 * float(np.mean(times)),
                    f"map@{args.k}": metrics.mean_average_precision(rel, args.k),
                }
            )
            bar.update(1)
        bar.close()
    finally:
        db.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
    result = {
        "model": name,
        "direction": args.direction,
        "k": args.k,
        "n_database": n,
        "n_queries": len(values),
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    if args.plot:
        from .plots import bench_figure

        bench_figure(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.direction}, k={args.k}, {n} items, {len(values)} queries through SQL "
        f"(load average {result['load_average'][0]:.2f})"
    )
    print(f"  {'candidates':>10} {'p50 ms':>8} {'mean ms':>8} {'MAP@' + str(args.k):>8}")
    for r in rows:
        print(f"  {r['candidates']:>10} {r['p50_ms']:>8.3f} {r['mean_ms']:>8.3f} {r[f'map@{args.k}']:>8.4f}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------------------------------
# shell / drop / backup
# ------------------------------------------------------------------------------------------
def _shell(args) -> int:
    """apsw's SQL shell on an hqdb connection: the hq module and the hq_* functions are there."""
    import apsw
    import apsw.shell

    from .errors import HqdbError

    db = _open(args.db, readonly=args.readonly)
    # Shadow tables read-only, as SQLite's defensive mode makes them once it knows them: the schema
    # was read before the hq module was registered, so it is re-read (with the module's
    # xShadowName) first. Statements on hq tables still write them; a stray DELETE cannot.
    db.execute("PRAGMA writable_schema = RESET")
    db.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    try:
        db.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    except apsw.Error:
        # A keyword index (Collection.enable_fts) keeps itself in sync by triggers on a shadow
        # table, which defensive mode cannot even parse: this session leaves shadow tables writable.
        db.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 0)
        db.execute("PRAGMA writable_schema = RESET")
        print(
            f"hqdb shell: {args.db} has a keyword index (triggers on shadow tables), so SQLite's defensive "
            "mode is off in this session: shadow tables are writable here — do not write them",
            file=sys.stderr,
        )
    shell = apsw.shell.Shell(db=db, stdout=sys.stdout, stderr=sys.stderr)
    shell.header = args.header
    if args.mode:
        try:
            shell.command_mode([args.mode])
        except apsw.shell.Shell.Error as e:
            raise UserError(f"--mode {args.mode!r}: {str(e).splitlines()[0]}") from None
    if args.sql:
        for sql in args.sql:
            try:
                shell.process_complete_line(sql)
            except (apsw.Error, apsw.shell.Shell.Error, HqdbError):
                shell.handle_exception()  # prints the error unless the shell already has
                return EXIT_USER_ERROR  # the statements after it are not run
        return 0
    if sys.stdin.isatty():
        print(
            f"hqdb shell on {args.db}: SQL with hq tables and the hq_* functions; .help lists the dot "
            "commands, .quit (or Ctrl-D) leaves",
            file=sys.stderr,
        )
    else:
        shell.bail = True  # SQL piped in (a script): stop at the first error, exit status 1
    try:
        shell.cmdloop()
    except (apsw.Error, apsw.shell.Shell.Error, HqdbError):
        return EXIT_USER_ERROR  # printed by the shell
    return 0


def _owner_of_shadow(db, name: str, hq_tables) -> str | None:
    """The hq table whose shadow table ``name`` is, if any."""
    from .engine.catalog import is_shadow_suffix

    for t in hq_tables:
        if name.lower().startswith(t.lower() + "_") and is_shadow_suffix(name[len(t) + 1 :].lower()):
            return t
    return None


def _drop(args) -> int:
    """Drop an hq table (a collection through the collections API) with its shadow tables and
    catalog row; anything else is refused with what it is."""
    from .engine.catalog import model_of_tables, quote_ident, rows_name
    from .model.store import list_models

    db = _open(args.db)
    tables = model_of_tables(db)
    match = next((n for n in tables if n.lower() == args.table.lower()), None)
    if match is None:
        row = db.execute(
            "SELECT type, name FROM main.sqlite_master WHERE name = ? COLLATE NOCASE", (args.table,)
        ).fetchone()
        if row is None:
            if args.if_exists:
                if not args.json:
                    print(f"no table {args.table!r} in {args.db}: nothing to drop")
                else:
                    print(json.dumps({"dropped": None}))
                return 0
            raise UserError(f"no table {args.table!r} in {args.db} (hq tables: {', '.join(tables) or 'none'})")
        kind, name = row
        owner = _owner_of_shadow(db, name, tables)
        if owner is not None:
            raise UserError(f"{name} is a shadow table of the hq table {owner!r}: drop {owner!r} instead")
        raise UserError(
            f"{name} is not an hq table but a plain SQLite {kind}: hqdb drop removes hq tables only "
            f"(drop it with SQL, e.g. hqdb shell {args.db} 'DROP {kind.upper()} {quote_ident(name)}')"
        )
    model = tables[match]
    stored = model is not None and model in {m["name"] for m in list_models(db)}
    (rows,) = db.execute(f"SELECT count(*) FROM {quote_ident(rows_name(match))}").fetchone()
    if model:
        db.drop_collection(match)
    else:
        db.execute(f"DROP TABLE {quote_ident(match)}")
    kind = "collection" if model else "raw hq table"
    if args.json:
        print(json.dumps({"dropped": match, "kind": kind, "model": model, "rows": rows}))
    else:
        print(
            f"dropped {kind} {match!r} ({rows} rows) with its shadow tables from {args.db}"
            + (f"; model {model!r} stays stored" if stored else "")
        )
    return 0


def _backup(args) -> int:
    import hqdb

    from .engine.check import check

    db = _open(args.db, readonly=True)
    result = hqdb.backup(db, args.out, overwrite=args.overwrite)
    status = 0
    if args.check:
        copy = _open(args.out)  # our own new file: read-write, so closing it leaves no -wal/-shm behind
        report = check(copy)
        result["check"] = report
        status = 0 if report["ok"] else EXIT_INCONSISTENT
    if args.json:
        print(json.dumps(result))
        return status
    print(f"backed up {args.db} to {args.out}: {result['bytes']:,} bytes in {result['seconds']:.2f}s")
    if args.check:
        for name, problems in result["check"]["tables"].items():
            print(f"  {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            for p in problems:
                print(f"    {p}")
    return status


# ------------------------------------------------------------------------------------------
# check / rebuild
# ------------------------------------------------------------------------------------------


def _check(args) -> int:
    from .engine.check import check

    db = _open(args.db, readonly=True)
    report = check(db, args.table)
    if args.json:
        print(json.dumps(report))
    else:
        for name, problems in report["tables"].items():
            print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            for p in problems:
                print(f"  {p}")
        if not report["tables"]:
            print("no hq tables")
    return 0 if report["ok"] else EXIT_INCONSISTENT


def _rebuild(args) -> int:
    from .engine.check import rebuild_table

    db = _open(args.db)
    stats = rebuild_table(db, args.table, drop_missing=args.drop_missing)
    if args.vacuum:
        db.execute("VACUUM")
    if args.json:
        print(json.dumps(stats))
        return 0
    for codeset, kept in stats["kept"].items():
        print(
            f"{args.table} ({codeset}): {kept} rows kept, {stats['lost'][codeset]} lost, "
            f"{stats['orphans_dropped'][codeset]} orphan codes dropped, "
            f"{stats['chunks_before'][codeset]} -> {stats['chunks_after'][codeset]} chunks"
        )
    if stats["rows_dropped"]:
        print(f"{stats['rows_dropped']} rows without codes deleted")
    return 0


# ------------------------------------------------------------------------------------------
# plumbing
# ------------------------------------------------------------------------------------------
def _show_progress(args) -> bool:
    """Bars go to a terminal only: scripts reading stderr get clean lines."""
    return not getattr(args, "quiet", False) and not getattr(args, "json", False) and sys.stderr.isatty()


def _bar(total: int, desc: str, enabled: bool, unit: str = "step"):
    from .progress import progress_bar

    return progress_bar(total, desc, enabled and sys.stderr.isatty(), unit=unit)


def _check_ranges(args) -> None:
    """Integer options within what the engine accepts, checked before any work (a huge -k
    would otherwise overflow deep inside a search)."""
    from .engine.query import MAX_CANDIDATES, MAX_K

    ranges = {
        "k": ("k", 1, MAX_K),
        "candidates": ("candidates", 1, MAX_CANDIDATES),
        "precision_k": ("--precision-k", 1, MAX_K),
        "batch_size": ("--batch-size", 1, 1 << 20),
        "row": ("--row", 0, (1 << 63) - 1),
        "items": ("--items", 2, 10_000_000),
        "n_queries": ("--n-queries", 1, 1_000_000),
        "image_size": ("--image-size", 16, 1024),
    }
    for attr, (name, lo, hi) in ranges.items():
        value = getattr(args, attr, None)
        if isinstance(value, int) and not lo <= value <= hi:
            raise UserError(f"{name} must be between {lo} and {hi}, got {value}")


def _image_arguments(p) -> None:
    p.add_argument("--backbone", help="image backbone of a model trained from a folder: timm:NAME or open_clip:NAME")
    p.add_argument("--weights", help="the backbone's weights: a local .safetensors or .pth state dict")
    p.add_argument("--image-size", type=int, help="backbone input size in pixels (default: the backbone's)")
    p.add_argument(
        "--captions", help="captions CSV file,caption[,columns...] (default DIR/captions.csv, else DIR/*.txt)"
    )
    p.add_argument(
        "--text-featurizer", help="text featurizer of a new model: tfidf (default), minilm or open_clip:NAME"
    )
    p.add_argument("--text-weights", help="weights of an open_clip text featurizer (default: --weights)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .engine.query import MAX_K

    parser = argparse.ArgumentParser(prog="hqdb", description="Cross-modal search over compact codes in SQLite.")
    parser.add_argument("--version", action="version", version=f"hqdb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train a small model, index items and search them from SQL")
    demo.add_argument(
        "--db",
        default="demo.db",
        help="database file to (re)create the demo tables in (a new file, or one an earlier demo made)",
    )
    demo.add_argument("--data", help=".npz with image, text, labels (default: a generated synthetic set)")
    demo.add_argument("--bits", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--raw", action="store_true", help="the engine-only demo: random codes, no model")

    tr = sub.add_parser("train", help="train an encoder on paired data and store it in a database")
    tr.add_argument("data", help=".npz with image, text (or --text-key), labels; or a folder of captioned images")
    tr.add_argument("--db", required=True, help="database file to store the model in (created if missing)")
    tr.add_argument("--name", required=True, help="name to store the model under")
    tr.add_argument("--method", default="hq", choices=METHODS, help="training method (default hq; docs/methods.md)")
    tr.add_argument("--bits", type=int, default=64, help="code length (default 64)")
    tr.add_argument(
        "--books", type=int, default=None, help="additive-quantization codebooks (default: the method's; 4 for hq)"
    )
    tr.add_argument("--codewords", type=int, default=256, help="codewords per codebook (default 256)")
    tr.add_argument("--epochs", type=int, default=50, help="maximum epochs (default 50, early stopping)")
    tr.add_argument("--text-key", default="text", help="array of the .npz holding the text (default text)")
    tr.add_argument("--val-fraction", type=float, default=0.2, help="held-out share for early stopping (default 0.2)")
    tr.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after early stopping, train the chosen epochs again on every item (default: up to 100,000 items)",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--label-free",
        default="clusters",
        choices=("clusters", "pairs"),
        help="supervision when the data has no labels: text-cluster pseudo-labels (default) or the pairs alone",
    )
    tr.add_argument(
        "--clusters",
        type=int,
        default=DEFAULT_CLUSTERS,
        help=f"text clusters of --label-free clusters (default {DEFAULT_CLUSTERS}; about the number of topics)",
    )
    tr.add_argument("--replace", action="store_true", help="overwrite a model of the same name")
    _image_arguments(tr)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true", help="print the result as JSON")

    ix = sub.add_parser("index", help="bulk-load items from an .npz, a .csv or a folder of images into a collection")
    ix.add_argument(
        "data",
        help=".npz (arrays of N rows: the model's inputs and 1-D metadata), .csv "
        "(a row per item; a modality column holds text or a list of numbers), or a folder of images "
        "(captions from captions.csv or sidecar .txt files; resumable)",
    )
    ix.add_argument("--db", required=True)
    ix.add_argument("--collection", required=True, help="collection to add to (created if --model is given)")
    ix.add_argument("--model", help="stored model of a new collection")
    ix.add_argument("--columns", help="comma-separated metadata fields to keep (default: all found)")
    ix.add_argument("--batch-size", type=int, default=1024, help="items per transaction (a folder: at most 64)")
    _image_arguments(ix)
    ix.add_argument("--bits", type=int, default=64, help="code length of a model trained from a folder (default 64)")
    ix.add_argument("--epochs", type=int, default=50, help="epochs of a model trained from a folder (default 50)")
    ix.add_argument("--seed", type=int, default=0, help="seed of a model trained from a folder")
    ix.add_argument(
        "--clusters",
        type=int,
        default=DEFAULT_CLUSTERS,
        help=f"caption clusters that supervise a model trained from a folder (default {DEFAULT_CLUSTERS}; "
        "about the number of kinds of pictures)",
    )
    ix.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ix.add_argument("--json", action="store_true")

    se = sub.add_parser("search", help="search a collection by text or by an image feature vector")
    se.add_argument("--db", required=True)
    se.add_argument("--collection", required=True)
    se.add_argument("--text", help="query text (needs a model with a text featurizer)")
    se.add_argument(
        "--image",
        help="query image file (a model with an image featurizer), or features: a .npy vector "
        "(or matrix with --row), or an .npz with --key",
    )
    se.add_argument("--row", type=int, default=0, help="row of a 2-D --image array (default 0)")
    se.add_argument("--key", default="image", help="array of an --image .npz (default image)")
    se.add_argument("--target", help="modality to search (default: the other one)")
    se.add_argument("-k", type=int, default=10, help=f"results (default 10, at most {MAX_K})")
    se.add_argument(
        "--candidates",
        type=int,
        help="Hamming shortlist re-ranked by AQD (default max(1000, 10k))",
    )
    se.add_argument("--mode", choices=MODES, help="default: the model's own search")
    se.add_argument("--where", help='SQL condition on the columns, e.g. "year > ?"')
    se.add_argument("--arg", action="append", default=[], help="value for a ? in --where (repeatable)")
    se.add_argument("--json", action="store_true")
    se.add_argument(
        "--hybrid",
        action="store_true",
        help="fuse the code search with the collection's keyword index (FTS5) over the --text words, "
        "by reciprocal-rank fusion (distance = minus the fused score)",
    )

    ev = sub.add_parser("eval", help="MAP of stored models, measured through SQL search")
    ev.add_argument("--db", required=True)
    ev.add_argument("--model", required=True, action="append", help="stored model (repeat to compare code lengths)")
    ev.add_argument("--queries", required=True, help=".npz of query items")
    ev.add_argument("--database", required=True, help=".npz of database items")
    ev.add_argument("--candidates", type=int, default=1000)
    ev.add_argument("--precision-k", type=int, default=10)
    ev.add_argument(
        "--plot", metavar="PNG", help="write precision-recall curves and MAP by code length (needs matplotlib)"
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--json", action="store_true")
    ev.add_argument(
        "--csv", action="store_true", help="print the results as CSV: a row per model, direction and ranking"
    )

    be = sub.add_parser("bench", help="search latency and MAP against the number of candidates")
    be.add_argument("--db", help="database with the model (default: train one on a synthetic set in memory)")
    be.add_argument("--model")
    be.add_argument("--queries", help=".npz of query items (with --db)")
    be.add_argument("--database", help=".npz of database items (with --db)")
    be.add_argument(
        "--candidates",
        default="50,100,200,500,1000,2000,5000",
        help="comma-separated candidate counts (default 50,...,5000; capped at the items)",
    )
    be.add_argument(
        "-k",
        type=int,
        default=50,
        help=f"results per query; MAP@k is reported (default 50, at most {MAX_K})",
    )
    be.add_argument("--direction", choices=("i2t", "t2i"), default="i2t")
    be.add_argument("--items", type=int, default=5000, help="synthetic database items (default 5000)")
    be.add_argument("--n-queries", type=int, default=200, help="synthetic queries (default 200)")
    be.add_argument("--bits", type=int, default=64, help="code length of the synthetic model (default 64)")
    be.add_argument("--epochs", type=int, default=50, help="training epochs of the synthetic model (default 50)")
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--plot", metavar="PNG", help="write latency and MAP against candidates (needs matplotlib)")
    be.add_argument("-q", "--quiet", action="store_true")
    be.add_argument("--json", action="store_true")

    mo = sub.add_parser(
        "models",
        help="list, delete or rename the models stored in a database",
        description="hqdb models [list] --db DB | hqdb models rm NAME --db DB | hqdb models rename OLD NEW --db DB",
    )
    mo.add_argument("action", nargs="?", choices=("list", "rm", "rename"), default="list", help="default list")
    mo.add_argument("names", nargs="*", metavar="NAME", help="rm: the model; rename: its name and the new name")
    mo.add_argument("--db", required=True)
    mo.add_argument(
        "--force",
        action="store_true",
        help="rm a model even if hq tables use it (they keep their rows but cannot insert or search)",
    )
    mo.add_argument("--json", action="store_true")

    sh = sub.add_parser(
        "shell",
        help="SQL shell (apsw's) on a database with hq tables; with SQL arguments, runs them and exits",
    )
    sh.add_argument("db", help="database file (must exist)")
    sh.add_argument("sql", nargs="*", metavar="SQL", help="statements or dot commands to run instead of a prompt")
    sh.add_argument("--readonly", action="store_true", help="open the database read-only")
    sh.add_argument("--header", action="store_true", help="print column names above results")
    sh.add_argument("--mode", help="output mode: list (default off a terminal), csv, json, box, table, line, ...")

    dr = sub.add_parser("drop", help="drop an hq table (or collection) with its shadow tables and catalog row")
    dr.add_argument("db", help="database file")
    dr.add_argument("table", help="the hq table or collection")
    dr.add_argument("--if-exists", action="store_true", help="a missing table is not an error")
    dr.add_argument("--json", action="store_true")

    bk = sub.add_parser("backup", help="consistent copy of a database while other processes keep writing")
    bk.add_argument("db", help="database file to copy")
    bk.add_argument("out", help="the copy (a new file)")
    bk.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    bk.add_argument("--check", action="store_true", help="run hqdb check on the copy (exit status 3 on problems)")
    bk.add_argument("--json", action="store_true")

    ck = sub.add_parser("check", help="consistency check of hq tables (exit status 3 if problems are found)")
    ck.add_argument("db", help="database file")
    ck.add_argument("--table", help="check only this hq table")
    ck.add_argument("--json", action="store_true")

    rb = sub.add_parser("rebuild", help="rewrite an hq table's codes from what is stored; compacts it")
    rb.add_argument("db", help="database file")
    rb.add_argument("table", help="hq table to rebuild")
    rb.add_argument(
        "--drop-missing",
        action="store_true",
        help="delete rows of a raw table whose codes are lost (otherwise an error names them)",
    )
    rb.add_argument("--vacuum", action="store_true", help="VACUUM afterwards to give freed pages back")
    rb.add_argument("--json", action="store_true")

    inf = sub.add_parser("info", help="kernel backend and versions; with --db its tables, rows and bytes per row")
    inf.add_argument("--db", help="database file to describe")
    inf.add_argument("--json", action="store_true")
    return parser


COMMANDS = {
    "demo": _demo,
    "train": _train,
    "index": _index,
    "search": _search,
    "eval": _eval,
    "bench": _bench,
    "models": _models,
    "shell": _shell,
    "drop": _drop,
    "backup": _backup,
    "info": _info,
    "check": _check,
    "rebuild": _rebuild,
}


def _user_errors() -> tuple:
    import apsw

    from .errors import HqdbError

    return (UserError, HqdbError, apsw.Error, ValueError, KeyError, OSError)


def _database_error(e: BaseException, args) -> BaseException:
    """An apsw error about the command's database file (locked, read-only, cannot open) as the
    hqdb error that names the file and what to do."""
    import apsw

    from .sql.connection import database_error

    path = getattr(args, "db", None)
    if isinstance(e, apsw.Error) and isinstance(path, str):
        return database_error(e, path)
    return e


EXTRAS = {"torch": "train", "matplotlib": "plot", "pandas": "pandas", "pyarrow": "pandas"}


def _install_hint(e: ImportError) -> str:
    """The message of a missing optional dependency with, once, the command that installs its
    extra (the README's form: ``pip install -e '.[extra]'`` in a checkout)."""
    extra = EXTRAS.get((e.name or "").split(".")[0])
    if extra is None or "pip install" in str(e):
        return str(e)
    return f"{e} (the {extra} extra: pip install -e '.[{extra}]')"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # `hqdb shell DB --header "SQL"`: SQL after an option is still SQL
        if args.command != "shell" or any(u.startswith("-") for u in unknown):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.sql += unknown
    try:
        try:
            _check_ranges(args)
            return COMMANDS[args.command](args)
        finally:
            while _OPEN:
                _OPEN.pop().close()
    except ImportError as e:
        print(f"hqdb: error: {_install_hint(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `hqdb eval --csv | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except _user_errors() as e:
        e = _database_error(e, args)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hqdb: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("hqdb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
