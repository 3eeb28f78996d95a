"""`DeliveryState`: the stored text is what the Lua scripts read and write, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sesflow.common.schema import EventType
from sesflow.sender.state import (
    QUEUED,
    STOPPED,
    SUPPRESSED,
    UNKNOWN,
    ClaimValues,
    DeliveryState,
    Kind,
)


def test_every_state_has_its_stored_text() -> None:
    assert QUEUED.encode() == ""
    assert DeliveryState.inflight(1700000000000, "h-1").encode() == "i:1700000000000:h-1"
    assert DeliveryState.sent("0100abc").encode() == "s:0100abc"
    assert DeliveryState.failed("rejected:MessageRejected").encode() == "f:rejected:MessageRejected"
    assert (STOPPED.encode(), SUPPRESSED.encode(), UNKNOWN.encode()) == ("x", "p", "u")


def test_parse_reads_each_kind() -> None:
    assert DeliveryState.parse(None) is QUEUED and DeliveryState.parse("") is QUEUED
    claim = DeliveryState.parse("i:42:host:with:colons")
    assert (claim.kind, claim.ms, claim.value) == (Kind.INFLIGHT, 42, "host:with:colons")
    assert DeliveryState.parse("s:id") == DeliveryState.sent("id")
    assert DeliveryState.parse("f:no_content") == DeliveryState.failed("no_content")
    assert DeliveryState.parse("x") is STOPPED
    assert DeliveryState.parse("p") is SUPPRESSED
    assert DeliveryState.parse("u") is UNKNOWN


def test_final_inflight_and_events() -> None:
    claim = DeliveryState.inflight(1, "c")
    assert claim.is_inflight and not claim.final and not claim.queued
    assert QUEUED.queued and not QUEUED.final
    for state, event in [
        (DeliveryState.sent("id"), EventType.SENT),
        (DeliveryState.failed("r"), EventType.FAILED),
        (STOPPED, EventType.STOPPED),
        (SUPPRESSED, EventType.SUPPRESSED),
        (UNKNOWN, EventType.UNKNOWN),
    ]:
        assert state.final and state.event == event


def test_a_claim_of_no_readable_time_is_ancient_and_kept_as_is() -> None:
    for text in ("i:abc", "i:12", "i:012:c", "i::c"):
        state = DeliveryState.parse(text)
        assert state.is_inflight and state.encode() == text
        assert state.claim_age_ms(10_000) == 10_000


def test_an_unrecognised_value_is_final_and_kept_as_is() -> None:
    state = DeliveryState.parse("z:legacy")
    assert state.final and state.encode() == "z:legacy"


@given(st.text())
def test_parse_then_encode_is_the_identity(text: str) -> None:
    assert DeliveryState.parse(text).encode() == text
    assert DeliveryState.parse(text).final == (bool(text) and not text.startswith("i:"))


def test_claim_values_strictly_increase() -> None:
    claims = ClaimValues("c")
    first, second = claims.next(), claims.next()
    assert second.ms > first.ms and first.value == second.value == "c"
    assert DeliveryState.parse(first.encode()) == first


def test_final_states_are_one_byte_and_read_back_without_their_value() -> None:
    finals = [DeliveryState.sent("id"), DeliveryState.failed("r"), STOPPED, SUPPRESSED, UNKNOWN]
    assert [s.code for s in finals] == ["s", "f", "x", "p", "u"]
    for state in finals:
        back = DeliveryState.parse(state.code)
        assert back.kind is state.kind and back.final and back.value == ""
    assert DeliveryState.parse("z:legacy").code == "u"  # an odd value is recorded as unknown
