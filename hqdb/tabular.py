"""Typing the text cells of a CSV (``hqdb insert FILE.csv``, a folder's ``captions.csv``): one
rule for every reader, so a column is an INTEGER, REAL or TEXT column the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable


def parse_scalar(text: str):
    """'12' → 12, '1.5' → 1.5, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def column_type(cells: Iterable[str]) -> type:
    """The type of a column from its non-empty cells: ``int`` if every cell parses as one,
    else ``float`` if every cell is a number, else ``str`` (also for a column with no values)."""
    values = [parse_scalar(c) for c in cells]
    if values and all(isinstance(v, int) for v in values):
        return int
    if values and all(isinstance(v, (int, float)) for v in values):
        return float
    return str
