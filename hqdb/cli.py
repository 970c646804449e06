"""The ``hqdb`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hqdb", description="Cross-modal search over compact codes in SQLite.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build a table of synthetic codes and search it from SQL")
    demo.add_argument("--db", default="demo.db", help="database file to (re)create the demo table in")
    demo.add_argument("-n", "--items", type=int, default=100_000)
    demo.add_argument("--bits", type=int, default=128)
    demo.add_argument("--books", type=int, default=4)
    demo.add_argument("--codewords", type=int, default=256)
    demo.add_argument("--queries", type=int, default=100)
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="print the kernel backend, CPU features and versions")
    args = parser.parse_args(argv)

    if args.command == "info":
        import hqdb

        print(json.dumps(hqdb.info(), indent=2))
        return 0
    if args.command == "demo":
        from .demo import run

        run(args.db, n=args.items, dim=args.bits, books=args.books, codewords=args.codewords,
            queries=args.queries, seed=args.seed)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
