"""The admission rule for a call that finds no free worker."""

from __future__ import annotations

from runtime.admission import Admission, Verdict, admit_to_queue
from runtime.errors import Overloaded, Unavailable


def test_a_call_may_wait_when_the_queue_has_room_and_the_wait_fits() -> None:
    admission = admit_to_queue("f", queued=3, queue_max=4, max_wait_s=0.5, wait_s=0.4)
    assert admission.verdict is Verdict.QUEUE_OK and admission.admitted


def test_a_full_queue_refuses_whatever_the_wait() -> None:
    admission = admit_to_queue("f", queued=4, queue_max=4, max_wait_s=9.0, wait_s=0.0)
    assert admission.verdict is Verdict.QUEUE_FULL and not admission.admitted
    assert "4 calls already wait" in admission.message


def test_a_wait_over_the_budget_refuses_with_a_retry_hint_in_whole_seconds() -> None:
    admission = admit_to_queue("f", queued=0, queue_max=4, max_wait_s=0.2, wait_s=2.3)
    assert admission.verdict is Verdict.WAIT_TOO_LONG
    assert "about 2300 ms, over its 200 ms limit" in admission.message
    failure = admission.failure()
    assert isinstance(failure, Overloaded)
    assert (failure.status, failure.retry_after_s, failure.reason) == (429, 3, "wait_too_long")


def test_an_unavailable_verdict_becomes_a_503() -> None:
    failure = Admission(Verdict.UNAVAILABLE, message="function f cannot start: boom").failure()
    assert isinstance(failure, Unavailable) and failure.status == 503
