"""Progress bars of long operations (training, indexing, evaluation) on stderr."""

from __future__ import annotations

import sys


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "item"):
    """A tqdm bar on stderr (tqdm is a core dependency), or one that does nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
