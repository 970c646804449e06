"""The ``hqdb`` command line: train, models, eval, demo, bench-free info."""

from __future__ import annotations

import argparse
import json
import sys

from .model import METHODS


def _train(args) -> int:
    import hqdb

    model = hqdb.train(args.data, method=args.method, bits=args.bits, books=args.books,
                       codewords=args.codewords, text_key=args.text_key,
                       val_fraction=args.val_fraction, seed=args.seed, progress=not args.quiet)
    db = hqdb.connect(args.db)
    hqdb.save_model(db, args.name, model, replace=args.replace)
    print(f"saved model {args.name!r} ({args.method}, {args.bits} bits, {model.books}x{args.codewords}) in {args.db}")
    metrics = model.config.get("metrics")
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


def _models(args) -> int:
    import hqdb

    db = hqdb.connect(args.db, readonly=True)
    models = hqdb.list_models(db)
    if args.json:
        print(json.dumps(models, indent=2))
    elif not models:
        print(f"no models in {args.db}")
    else:
        for m in models:
            mods = ",".join(m.get("modalities") or [])
            print(f"{m['name']:<20} {m.get('method') or '?':<6} {m.get('bits')} bits  "
                  f"{m.get('books')}x{m.get('codewords')}  [{mods}]  {m['created_at']}")
    return 0


def _eval(args) -> int:
    import hqdb
    from .evaluate import evaluate

    db = hqdb.connect(args.db)
    result = evaluate(db, args.model, args.queries, args.database, candidates=args.candidates,
                      precision_k=args.precision_k)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {args.model}: {result['bits']} bits + {result['books']}x{result['codewords']} "
          f"({result['bytes_per_item']} bytes/item); {result['n_queries']} queries x {result['n_database']} items")
    for direction in ("i2t", "t2i", "harmonic"):
        if direction not in result:
            continue
        for ranking, scores in result[direction].items():
            cells = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
            print(f"  {direction:<8} {ranking:<10} {cells}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hqdb", description="Cross-modal search over compact codes in SQLite.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small model, index items and search them from SQL")
    demo.add_argument("--db", default="demo.db", help="database file to (re)create the demo tables in")
    demo.add_argument("--data", help=".npz with image, text, labels (default: a generated synthetic set)")
    demo.add_argument("--bits", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--raw", action="store_true", help="the engine-only demo: random codes, no model")

    tr = sub.add_parser("train", help="train an encoder on paired data and store it in a database")
    tr.add_argument("data", help=".npz with image, text (or --text-key), labels")
    tr.add_argument("--db", required=True)
    tr.add_argument("--name", required=True, help="name to store the model under")
    tr.add_argument("--method", default="hq", choices=METHODS, help="training method (docs/methods.md)")
    tr.add_argument("--bits", type=int, default=64)
    tr.add_argument("--books", type=int, default=None, help="codebooks (default: the method's)")
    tr.add_argument("--codewords", type=int, default=256)
    tr.add_argument("--text-key", default="text")
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--replace", action="store_true", help="overwrite a model of the same name")
    tr.add_argument("-q", "--quiet", action="store_true")

    mo = sub.add_parser("models", help="list the models stored in a database")
    mo.add_argument("--db", required=True)
    mo.add_argument("--json", action="store_true")

    ev = sub.add_parser("eval", help="MAP of a stored model, measured through SQL search")
    ev.add_argument("--db", required=True)
    ev.add_argument("--model", required=True)
    ev.add_argument("--queries", required=True, help=".npz of query items")
    ev.add_argument("--database", required=True, help=".npz of database items")
    ev.add_argument("--candidates", type=int, default=1000)
    ev.add_argument("--precision-k", type=int, default=10)
    ev.add_argument("--json", action="store_true")

    sub.add_parser("info", help="print the kernel backend, CPU features and versions")
    args = parser.parse_args(argv)

    if args.command == "info":
        import hqdb

        print(json.dumps(hqdb.info(), indent=2))
        return 0
    if args.command == "demo":
        if args.raw:
            from .demo import run

            run(args.db, seed=args.seed)
        else:
            from .demo import run_model

            run_model(args.db, data=args.data, bits=args.bits, seed=args.seed)
        return 0
    return {"train": _train, "models": _models, "eval": _eval}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
