"""Rows of one table, in memory, shaped as dtable-server returns them (`_id`, `_ctime`, `_mtime`, values)."""

from __future__ import annotations

import base64
import copy
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

Row = dict[str, Any]

SYSTEM_KEYS = ("_id", "_ctime", "_mtime")


def new_row_id() -> str:
    """A 22-character row id in SeaTable's alphabet (URL-safe base64 of a UUID, unpadded)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii")[:22]


def seatable_time(epoch: float) -> str:
    """Timestamps as dtable-server writes them: UTC, milliseconds, `+00:00`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _user_values(values: dict[str, Any]) -> dict[str, Any]:
    # System columns are not writable through the API; SeaTable ignores them silently.
    return {key: value for key, value in values.items() if not key.startswith("_")}


def _sort_key(column: str) -> Callable[[Row], tuple[int, Any]]:
    def key(row: Row) -> tuple[int, Any]:
        value = row.get(column)
        if value is None:
            return (0, 0)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (1, value)
        return (2, str(value))

    return key


def column_type(value: Any) -> str:
    """The SeaTable column type a value most likely came from, for metadata answers."""
    if isinstance(value, bool):
        return "checkbox"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "multiple-select"
    return "text"


class Table:
    """One table: ordered rows, schemaless (any column name is accepted; SeaTable ignores unknown ones)."""

    def __init__(self, name: str, table_id: str, now: Callable[[], float]) -> None:
        self.name = name
        self.table_id = table_id
        self._now = now
        self._rows: list[Row] = []
        self._lock = threading.Lock()

    def _find(self, row_id: str) -> Row | None:
        return next((row for row in self._rows if row["_id"] == row_id), None)

    def select(self, order_by: str | None = None, desc: bool = False, start: int = 0,
               limit: int = 1000) -> list[Row]:
        """Rows in table order, or sorted by one column; a slice like `start`/`limit` ask."""
        with self._lock:
            rows = list(self._rows)
        if order_by:
            rows.sort(key=_sort_key(order_by), reverse=desc)
        return copy.deepcopy(rows[start : start + limit])

    def get(self, row_id: str) -> Row | None:
        """One row, or None."""
        with self._lock:
            row = self._find(row_id)
            return copy.deepcopy(row) if row is not None else None

    def append(self, values: dict[str, Any]) -> Row:
        """Add a row at the end; returns it with its new `_id`, `_ctime`, `_mtime`."""
        stamp = seatable_time(self._now())
        row: Row = {"_id": new_row_id(), "_ctime": stamp, "_mtime": stamp}
        row.update(copy.deepcopy(_user_values(values)))
        with self._lock:
            self._rows.append(row)
            return copy.deepcopy(row)

    def append_many(self, rows: Iterable[dict[str, Any]]) -> list[Row]:
        """Add several rows in order."""
        return [self.append(values) for values in rows]

    def update(self, row_id: str, values: dict[str, Any]) -> Row | None:
        """Merge `values` into a row and touch `_mtime`; None if there is no such row."""
        with self._lock:
            row = self._find(row_id)
            if row is None:
                return None
            row.update(copy.deepcopy(_user_values(values)))
            row["_mtime"] = seatable_time(self._now())
            return copy.deepcopy(row)

    def delete(self, row_ids: Iterable[str]) -> int:
        """Remove rows; returns how many existed."""
        wanted = set(row_ids)
        with self._lock:
            before = len(self._rows)
            self._rows = [row for row in self._rows if row["_id"] not in wanted]
            return before - len(self._rows)

    def columns(self) -> list[dict[str, Any]]:
        """Columns as SeaTable metadata lists them, derived from the values written so far."""
        with self._lock:
            seen: dict[str, Any] = {}
            for row in self._rows:
                for key, value in row.items():
                    if not key.startswith("_") and (key not in seen or seen[key] is None):
                        seen[key] = value
        return [{"key": name, "name": name, "type": column_type(value), "data": None}
                for name, value in seen.items()]

    def metadata(self) -> dict[str, Any]:
        """The table's entry in a base's metadata."""
        return {
            "_id": self.table_id,
            "name": self.name,
            "columns": self.columns(),
            "views": [{"_id": "0000", "name": "Default View", "type": "table"}],
        }
