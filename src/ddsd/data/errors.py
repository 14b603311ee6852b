"""Error type of the data package and a collector that gathers many problems before failing.

Every problem is one line that names the file (and, where it applies, the offending value), so that a
single run reports all the bad files of a dataset instead of stopping at the first one.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_SHOWN = 20


class DataError(ValueError):
    """A dataset (or its description) is invalid.

    ``errors`` holds every collected problem (one line each); ``str(err)`` shows a heading, the first
    ``MAX_SHOWN`` problems and how many more there were.
    """

    def __init__(self, heading: str, errors: Iterable[str] = ()) -> None:
        self.heading = heading
        self.errors: list[str] = list(errors)
        super().__init__(format_errors(heading, self.errors))


def name_list(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are (``a, b and 3 more``)."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def format_errors(heading: str, errors: list[str], limit: int = MAX_SHOWN) -> str:
    """Heading plus the first ``limit`` errors as a bulleted list and a count of the rest."""
    if not errors:
        return heading
    lines = [f"{heading}: {len(errors)} problem{'s' if len(errors) != 1 else ''}"]
    lines += [f"  - {e}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    return "\n".join(lines)


class ErrorCollector:
    """Accumulates problem lines; ``raise_if_any`` turns them into one :class:`DataError`."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, message: str) -> None:
        self.errors.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        self.errors.extend(messages)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def __len__(self) -> int:
        return len(self.errors)

    def raise_if_any(self, heading: str) -> None:
        if self.errors:
            raise DataError(heading, self.errors)
