"""The cloud node's record store: de-duplication by (node, call id), arrival order, filters,
and records that survive a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.records.buffer import Record
from gateway.records.store import RecordStore


def record(call_id: str, node: str = "edge", function: str = "echo", at: float = 10.0) -> Record:
    return {
        "call_id": call_id,
        "function": function,
        "digest": "d",
        "node": node,
        "served_by": "local",
        "reason": "",
        "status": 200,
        "duration_s": 0.01,
        "request_bytes": 3,
        "response_bytes": 4,
        "at": at,
    }


def test_a_batch_delivered_twice_is_stored_once(tmp_path: Path) -> None:
    store = RecordStore(tmp_path, "cloud")
    store.open()
    batch = [record("a"), record("b")]

    assert store.add(batch) == 2
    assert store.add([*batch, record("c")]) == 1
    assert store.add([record("a", node="other")]) == 1  # another node's call "a"

    assert store.count == 4
    store.close()


def test_records_come_back_in_arrival_order_filtered_and_paged(tmp_path: Path) -> None:
    store = RecordStore(tmp_path, "cloud")
    store.open()
    store.add([record("a", at=1.0), record("b", function="ocr", at=2.0), record("c", at=3.0)])
    store.add([record("x", node="other", at=4.0)])

    everything = store.query()
    assert [r["call_id"] for r in everything] == ["a", "b", "c", "x"]
    assert everything[0]["status"] == 200 and everything[0]["node"] == "edge"
    assert [r["call_id"] for r in store.query(function="echo")] == ["a", "c", "x"]
    assert [r["call_id"] for r in store.query(node="other")] == ["x"]
    assert [r["call_id"] for r in store.query(since=2.5)] == ["c", "x"]
    first = store.query(limit=2)
    assert [r["call_id"] for r in store.query(after=first[-1]["seq"])] == ["c", "x"]
    store.close()


def test_the_records_survive_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    store = RecordStore(tmp_path, "cloud")
    store.open()
    store.add([record("a")])
    store.close()

    again = RecordStore(tmp_path, "cloud")
    again.open()
    assert again.add([record("a"), record("b")]) == 1
    assert [r["call_id"] for r in again.query()] == ["a", "b"]
    again.close()
    with sqlite3.connect(tmp_path / "records.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
