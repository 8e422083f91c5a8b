"""Progress bars for long loops, drawn on stderr so stdout stays clean for tables and pipes.

A live bar only makes sense on a terminal; in logs (CI, SLURM) it would leave blank lines, so
off a terminal nothing is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Bar:
    """Count, a free text field (e.g. the loss), items/s, elapsed and time left."""

    def __init__(
        self, total: int, description: str, unit: str = "it", completed: int = 0, show: bool = True
    ) -> None:
        self._progress: Any = None
        self.total = total
        if not show:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, info="")

    def update(self, completed: int, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def progress(items: Iterable[T], total: int, description: str, show: bool = True) -> Iterator[T]:
    """Yield `items` while a `Bar` counts them."""
    bar = Bar(total, description, show=show)
    try:
        for done, item in enumerate(items, start=1):
            yield item
            bar.update(done)
    finally:
        bar.close()
