"""What the async API shows of a job, which headers a job keeps, and a failed run's error."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.jobs.accept import _split_headers
from gateway.jobs.routes import call_view
from gateway.jobs.service import MOST_PENDING_CALLBACKS, AsyncCalls, _error_message
from gateway.jobs.store import Outcome


def job(**fields: str | bytes) -> dict[str, bytes]:
    base = {"status": "queued", "ef_fn": "motion", "ef_created": "100.5", "ef_idem": "k1"}
    merged = {**base, **fields}
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in merged.items()}


def test_a_finished_call_shows_its_result_text_and_timing() -> None:
    view = call_view(
        "c1",
        job(
            status="finished",
            ef_started="101.0",
            ef_ended="101.25",
            ef_dur="0.25",
            ef_node="edge-2",
            origin="edgefaas.motion@edge-1",
            ef_attempts="2",
            ef_code="200",
            ef_rh=b"content-type:text/plain",
            ef_rb=b"done",
        ),
    )
    assert view["status"] == "finished"
    assert (view["started_at"], view["ended_at"], view["duration_s"]) == (101.0, 101.25, 0.25)
    assert view["node"] == "edge-2" and view["attempts"] == 2
    assert view["queue"] == "edgefaas.motion@edge-1"
    assert view["result"] == {
        "status": 200,
        "headers": {"content-type": "text/plain"},
        "body": "done",
    }


def test_bytes_that_are_not_text_come_base64_encoded() -> None:
    view = call_view("c1", job(status="finished", ef_code="200", ef_rb=b"\xff\x00"))
    assert view["result"]["body_base64"] == "/wA="
    assert "body" not in view["result"]


@pytest.mark.parametrize(
    ("rq_status", "shown"),
    [("scheduled", "failed"), ("failed", "dead"), ("canceled", "canceled"), ("queued", "queued")],
)
def test_rq_states_are_shown_in_the_api_s_words(rq_status: str, shown: str) -> None:
    view = call_view("c1", job(status=rq_status, ef_retry_at="200.0"))
    assert view["status"] == shown
    assert view["result"] is None
    assert view["retry_at"] == (200.0 if shown == "failed" else None)


def test_a_queued_call_shows_no_start_even_after_an_earlier_run() -> None:
    view = call_view("c1", job(status="queued", ef_started="101.0", ef_ended="102.0"))
    assert view["started_at"] is None and view["ended_at"] is None


def test_a_job_keeps_the_caller_s_headers_but_not_the_mesh_s_or_its_own_controls() -> None:
    callback, key, kept = _split_headers(
        [
            (b"content-type", b"application/json"),
            (b"x-callback-url", b" http://hooks.lan/x "),
            (b"x-idempotency-key", b"order-7"),
            (b"x-call-id", b"abc"),
            (b"x-edgefaas-hop", b"1"),
            (b"host", b"edge:8080"),
            (b"x-sensor", b"aisle-3"),
        ]
    )
    assert callback == "http://hooks.lan/x"
    assert key == "order-7"
    assert kept == [(b"content-type", b"application/json"), (b"x-sensor", b"aisle-3")]


@pytest.mark.parametrize("value", [b"", b"a" * 257, b"tab\there"])
def test_a_bad_idempotency_key_is_refused(value: bytes) -> None:
    with pytest.raises(BadRequest, match="X-Idempotency-Key"):
        _split_headers([(b"x-idempotency-key", value)])


def test_a_failed_run_s_error_is_the_message_of_an_error_body() -> None:
    body = b'{"error": {"code": "function_error", "message": "function f raised Boom"}}'
    assert _error_message(body) == "function f raised Boom"
    assert _error_message(b"plain text from a handler") == "plain text from a handler"
    assert _error_message(b'{"error": "flat"}') == '{"error": "flat"}'
    assert len(_error_message(b"x" * 5000)) == 300


class FakeSender:
    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.sent: list[str] = []

    def submit(self, url: str, job_id: str, *rest: object) -> object:
        self.sent.append(job_id)

        class Done:
            def add_done_callback(self, callback: object) -> None:
                pass

        return Done()


@pytest.mark.parametrize(("pending", "sent"), [(0, ["c1"]), (MOST_PENDING_CALLBACKS, [])])
def test_callbacks_beyond_the_in_flight_cap_wait_in_the_outbox(
    pending: int, sent: list[str]
) -> None:
    calls = AsyncCalls.__new__(AsyncCalls)  # only the callback path is used
    sender = FakeSender(pending)
    calls.sender = sender  # type: ignore[assignment]
    calls.callback("http://hooks.example/x", "c1", "f", Outcome(200, b"", b"ok", 0.1))
    assert sender.sent == sent
