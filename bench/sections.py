"""Generated sections of bench/RESULTS.md: each benchmark script owns the text between its
``<!-- name begin -->`` and ``<!-- name end -->`` markers and rewrites only that."""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name} begin -->", f"<!-- {name} end -->"


def replace_section(path: Path, name: str, lines: list[str]) -> None:
    """Put ``lines`` between the markers of ``name`` in ``path`` (appended when absent)."""
    begin, end = markers(name)
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else ""
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
