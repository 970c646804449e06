"""Every code example of the README and docs/ runs here, so the docs cannot drift from the code.

Rules (they apply to any Markdown file added under docs/ or examples/ later, automatically):

- A file's fenced blocks run in order, in a fresh temporary directory, sharing one namespace
  (like a doctest session): ```python blocks are executed; ```sql blocks run on the connection
  named ``db`` that an earlier block opened, with each ``:name`` parameter bound to the Python
  variable of that name; ```sh blocks run each ``hqdb ...`` command through
  :func:`hqdb.cli.main` and require exit status 0 (``python -m hqdb ...`` works too).
- A page's own directory is on ``sys.path`` while it runs (examples/README.md imports the app).
- A block preceded by ``<!-- docs-test: skip (reason) -->`` is not run; the reason is required.
  Blocks of other languages (```text output, ```json, ...) are not code and are not run.
- Training is deterministic (fixed seeds), so within this test session ``hqdb.train`` returns a
  cached model for the same data and arguments instead of training twice.

Besides running the examples, the reference pages are checked for completeness against the
code: every CLI subcommand and option, every hq SQL function, table option and column, and every
public method of the Python API must appear in its reference page.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import hqdb
import hqdb.cli

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
RUNNABLE = {"python": "python", "py": "python", "sql": "sql", "sh": "sh", "bash": "sh", "console": "sh"}


def blocks(path: Path) -> list[dict]:
    """The fenced code blocks of a Markdown file: language, code, line, skip reason or None."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        skip = SKIP.search(before[-1]) if before else None
        out.append({"lang": RUNNABLE.get(m.group(1).lower()), "code": m.group(2),
                    "line": text.count("\n", 0, m.start()) + 1, "skip": skip.group(1) if skip else None,
                    "tag": m.group(1)})
    return out


_TRAINED: dict = {}


def _fingerprint(value) -> str:
    h = hashlib.sha256()
    if isinstance(value, (str, os.PathLike)):
        h.update(Path(value).read_bytes())
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(k.encode())
            arr = np.asarray(value[k])
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.astype(str).tobytes() if arr.dtype.kind in "UO" else arr.tobytes())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


@pytest.fixture
def cached_training(monkeypatch):
    real = hqdb.train

    from hqdb.model.train import train as implementation

    signature = inspect.signature(implementation)

    def train(data, **kwargs):
        options = signature.bind(data, **kwargs)
        options.apply_defaults()  # the same training however the arguments are spelled
        options = {k: v for k, v in options.arguments.items() if k not in ("data", "progress")}
        key = (_fingerprint(data), json.dumps(options, sort_keys=True, default=str))
        if key not in _TRAINED:
            _TRAINED[key] = real(data, **kwargs)
        return _TRAINED[key]

    monkeypatch.setattr(hqdb, "train", train)


def run_sh(code: str, where: str) -> None:
    lines = code.replace("\\\n", " ").splitlines()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line, comments=True)
        if argv[:3] == ["python", "-m", "hqdb"] or argv[:3] == ["python3", "-m", "hqdb"]:
            argv = ["hqdb", *argv[3:]]
        assert argv[0] == "hqdb", f"{where}: only hqdb commands can run here (mark the block skip): {line}"
        rc = hqdb.cli.main(argv[1:])
        assert rc == 0, f"{where}: `{line}` exited with {rc}"


def run_file(path: Path, tmp_path) -> list[str]:
    """Run a Markdown file's examples; return 'file:line' of each block run."""
    ran = []
    # A real module, so classes defined in examples (dataclasses) can find their module.
    module = types.ModuleType("hqdb_docs_example")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    cwd = os.getcwd()
    os.chdir(tmp_path)
    sys.path.insert(0, str(path.parent))  # a page's own directory is importable (examples/)
    try:
        for b in blocks(path):
            where = f"{path.relative_to(ROOT)}:{b['line']}"
            if b["lang"] is None or b["skip"]:
                continue
            if b["lang"] == "python":
                exec(compile(b["code"], where, "exec"), namespace)
            elif b["lang"] == "sql":
                db = namespace.get("db")
                assert db is not None, f"{where}: an sql block needs a connection named db from an earlier block"
                params = {name: namespace[name] for name in re.findall(r"(?<!:):([A-Za-z_]\w*)", b["code"])}
                db.execute(b["code"], params).fetchall()
            else:
                run_sh(b["code"], where)
            ran.append(where)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path.parent))
        del sys.modules[module.__name__]
        for v in namespace.values():  # close connections the example opened
            if isinstance(v, hqdb.Connection):
                v.close()
    return ran


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(path, tmp_path, cached_training, capsys):
    pytest.importorskip("torch")  # the examples train their (tiny) models
    ran = run_file(path, tmp_path)
    code_blocks = [b for b in blocks(path) if b["lang"] is not None]
    assert len(ran) == len([b for b in code_blocks if not b["skip"]])


def test_skips_and_languages_are_explicit():
    """Every fenced block is either runnable, marked skip with a reason, or plain output."""
    for path in DOC_FILES:
        for b in blocks(path):
            where = f"{path.relative_to(ROOT)}:{b['line']}"
            assert b["lang"] is not None or b["tag"] in ("", "text", "json", "output", "ini"), \
                f"{where}: unknown block language {b['tag']!r} (python, sql, sh, or text for output)"
            if b["lang"] is None:
                assert not b["code"].lstrip().startswith(("import ", "hqdb ", "SELECT", "CREATE")), \
                    f"{where}: code in a block marked {b['tag'] or 'plain'} would not be run"


def _reference(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_cli_reference_is_complete():
    text = _reference("cli.md")
    parser = hqdb.cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"hqdb {name}" in text, f"docs/cli.md does not describe `hqdb {name}`"
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in text, f"docs/cli.md does not mention `hqdb {name} {opt}`"


def test_sql_reference_is_complete():
    from hqdb.engine.options import RESERVED

    text = _reference("sql.md")
    db = hqdb.connect(":memory:")
    functions = {r[0] for r in db.execute("SELECT name FROM pragma_function_list WHERE name LIKE 'hq\\_%' ESCAPE '\\'")}
    assert {"hq_match", "hq_query", "hq_bits"} <= functions
    for f in sorted(functions):
        assert f"`{f}(" in text, f"docs/sql.md does not document the SQL function {f}()"
    for option in ("dim", "books", "codewords", "chunk_size", "model"):
        assert f"`{option}" in text, f"docs/sql.md does not document the table option {option}"
    for column in sorted(RESERVED - {"rowid", "oid", "_rowid_"}):
        assert f"`{column}`" in text, f"docs/sql.md does not document the column {column}"


def test_python_reference_is_complete():
    text = _reference("python.md")
    for cls in (hqdb.Collection, hqdb.Hits, hqdb.Hit):
        for name, member in vars(cls).items():
            if not name.startswith("_") and (callable(member) or isinstance(member, property)):
                assert f"{name}" in text and re.search(rf"\b{name}\b", text), \
                    f"docs/python.md does not document {cls.__name__}.{name}"
    for name in ("create_collection", "collection", "collections", "drop_collection"):
        assert f"db.{name}(" in text, f"docs/python.md does not document db.{name}()"
    for name in hqdb.__all__:
        if callable(getattr(hqdb, name)) and not inspect.isclass(getattr(hqdb, name)):
            assert f"hqdb.{name}(" in text, f"docs/python.md does not document hqdb.{name}()"
