"""The cloud node's record store: every call record of the mesh, in SQLite
(``DATA_DIR/records.sqlite3``, WAL, one transaction per batch).

A record is kept once per (node, call id): the shippers deliver at least once, and a batch
sent again after a lost answer changes nothing. Records keep the order they arrived in
(``seq``), which per node is the order its calls were answered. The store counts its
records as it adds them (:attr:`RecordStore.count`). The methods block; the gateway calls
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.records.buffer import FIELDS, Record, Row, as_record

FILE = "records.sqlite3"
MAX_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    call_id TEXT NOT NULL,
    function TEXT NOT NULL,
    digest TEXT NOT NULL,
    served_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    at REAL NOT NULL,
    UNIQUE (node, call_id)
);
CREATE INDEX IF NOT EXISTS records_function ON records (function, seq);
CREATE INDEX IF NOT EXISTS records_at ON records (at);
"""
_INSERT = (  # built from the fixed column names only
    f"INSERT OR IGNORE INTO records ({', '.join(FIELDS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in FIELDS)})"
)


class RecordStore:
    """Open with :meth:`open`, close with :meth:`close`; one connection, used by one thread
    at a time. ``node`` is the cloud node's name (its own records are written here)."""

    def __init__(self, data_dir: Path, node: str) -> None:
        self.path = data_dir / FILE
        self.node = node
        self.count = 0  # records held (counted once at open, then as they are added)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a batch answered 200 survives a power cut
        db.executescript(_SCHEMA)
        self.count = int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def add(self, records: list[Record]) -> int:
        """Keep ``records`` (one transaction); return how many were new."""
        with self._lock:
            db = self._require()
            before = db.total_changes
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, records)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            new = db.total_changes - before
            self.count += new
            return new

    async def write(self, rows: Sequence[Row]) -> int:
        """The cloud node's own records (its sink): stored at once, nothing dropped."""
        await asyncio.to_thread(self._add_rows, rows)
        return 0

    def _add_rows(self, rows: Sequence[Row]) -> None:
        self.add([as_record(self.node, row) for row in rows])

    def query(
        self,
        *,
        function: str = "",
        node: str = "",
        since: float | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Records in arrival order, each with its ``seq`` (pass the last one as ``after``
        for the next page); ``since`` is a Unix time (answered at or after)."""
        where = ["seq > ?"]
        args: list[Any] = [after]
        if function:
            where.append("function = ?")
            args.append(function)
        if node:
            where.append("node = ?")
            args.append(node)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        args.append(min(max(limit, 1), MAX_LIMIT))
        sql = (
            f"SELECT seq, {', '.join(FIELDS)} FROM records "  # noqa: S608 (fixed column names)
            f"WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        )
        with self._lock:
            cursor = self._require().execute(sql, args)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the record store {self.path} is not open")
        return self._db
