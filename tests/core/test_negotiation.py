"""TCP-ENO negotiation (RFC 8547 §4.3-4.8, §6) and tcpcrypt resumption rules (RFC 8548 §3.5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.core.eno import (
    Suboption,
    SynOption,
    build_syn_option,
    make_resumption_suboption,
    parse_syn_option,
)
from tcpcryptd.core.errors import ENOParseError
from tcpcryptd.core.negotiation import (
    ENOEndpoint,
    Fallback,
    FallbackReason,
    Negotiated,
    Role,
    TcpcryptValidity,
    _negotiate,
    _passive_open,
    may_accept_syn_data,
    must_abort_for_syn_data,
    negotiate,
    passive_answer,
    passive_open,
)

X = 0x21  # P-256
Y = 0x23  # X25519
Z = 0x24  # X448
MSS = (2, b"\x05\xb4")

RESUME_ID = bytes(range(1, 19))  # resume[i], 18 bytes
HALF_A, HALF_B = RESUME_ID[:9], RESUME_ID[9:]


def option(hex_wire: str) -> SynOption:
    return parse_syn_option(bytes.fromhex(hex_wire))


def syn_option(gopt: int | None, *subs: Suboption | int) -> SynOption:
    return build_syn_option(gopt, [s if isinstance(s, Suboption) else Suboption(s) for s in subs])


def segment_options(eno_wire: bytes) -> list[tuple[int, bytes]]:
    """A segment's (kind, data) options: an MSS option and the ENO option if any."""
    return [MSS] + ([(eno_wire[0], eno_wire[2:])] if eno_wire else [])


def deliver(sender: ENOEndpoint, receiver: ENOEndpoint, *, syn: bool, ack: bool) -> bytes:
    """One segment from ``sender`` to ``receiver``; returns the ENO option it carried."""
    wire = sender.option_for_segment(syn=syn, ack=ack)
    receiver.on_received(syn=syn, ack=ack, options=segment_options(wire))
    return wire


# --- RFC 8547 §6 examples --------------------------------------------------------------------


def test_fig9_bytes_and_transcript() -> None:
    a_syn = option("45042123")  # A: ENO<X,Y>, implicit global
    b_syn_ack = passive_answer(a_syn, [Y])
    assert b_syn_ack is not None and b_syn_ack.raw == bytes.fromhex("45040123")
    at_a = negotiate(a_syn, b_syn_ack)
    at_b = negotiate(b_syn_ack, a_syn)
    assert isinstance(at_a, Negotiated) and isinstance(at_b, Negotiated)
    assert at_a.role is Role.A and at_b.role is Role.B
    assert at_a.tep == at_b.tep == Y
    assert at_a.tep_byte == at_b.tep_byte == 0x23
    assert at_a.transcript == at_b.transcript == bytes.fromhex("4504212345040123")
    assert at_a.a_option == at_b.a_option == a_syn
    assert at_a.b_option == at_b.b_option == b_syn_ack
    assert at_a.peer_gopt == 0x01 and at_b.peer_gopt == 0x00  # implicit global
    assert not at_a.resumed


def test_fig9_segment_by_segment() -> None:
    a = ENOEndpoint.active(syn_option(None, X, Y))
    b = ENOEndpoint.passive([X, Y])
    syn = a.option_for_segment(syn=True, ack=False)
    assert syn == bytes.fromhex("45042123")
    b.on_received(syn=True, ack=False, options=segment_options(syn))
    syn_ack = b.option_for_segment(syn=True, ack=True)
    assert syn_ack == bytes.fromhex("45040123")
    a.on_received(syn=True, ack=True, options=segment_options(syn_ack))
    assert not a.encrypting  # A has not yet sent an ACK with ENO
    ack = a.option_for_segment(syn=False, ack=True)
    assert ack == b"\x45\x02"
    assert a.encrypting and not b.encrypting
    b.on_received(syn=False, ack=True, options=segment_options(ack))
    assert b.encrypting
    assert a.negotiated is not None and b.negotiated is not None
    assert a.negotiated.transcript == b.negotiated.transcript == bytes.fromhex("4504212345040123")
    assert (a.negotiated.role, b.negotiated.role) == (Role.A, Role.B)
    # A keeps sending ENO until it receives a non-SYN segment from B; B already has one.
    assert a.option_for_segment(syn=False, ack=True) == b"\x45\x02"
    assert b.option_for_segment(syn=False, ack=True) == b""
    a.on_received(syn=False, ack=True, options=segment_options(b""))
    assert a.option_for_segment(syn=False, ack=True) == b""
    assert a.encrypting  # segments after the first ACK need no ENO


def test_fig10_syn_ack_without_eno() -> None:
    a = ENOEndpoint.active(syn_option(None, X, Y))
    a.option_for_segment(syn=True, ack=False)
    a.on_received(syn=True, ack=True, options=segment_options(b""))
    assert a.outcome == Fallback(FallbackReason.NO_ENO)
    assert a.option_for_segment(syn=False, ack=True) == b""
    assert not a.encrypting and a.disabled and a.negotiated is None


def test_fig10_case2_passive_opener_supporting_neither_tep_answers_vacuous() -> None:
    answer, outcome = passive_open(option("45042123"), [Z])
    assert answer is not None and answer.raw == bytes.fromhex("450301") and answer.vacuous
    assert outcome == Fallback(FallbackReason.NO_COMMON_TEP)
    assert negotiate(option("45042123"), answer) == Fallback(FallbackReason.VACUOUS)


def test_fig10_case3_aa_mandatory_passive_opener_sends_no_eno() -> None:
    answer, outcome = passive_open(option("45042123"), [Y], aa_mandatory=True)
    assert answer is None and outcome == Fallback(FallbackReason.AA_MANDATORY)


def test_fig10_case4_syn_stripped_passive_opener_sends_no_eno() -> None:
    assert passive_open(None, [Y]) == (None, Fallback(FallbackReason.NO_ENO))
    b = ENOEndpoint.passive([Y])
    b.on_received(syn=True, ack=False, options=segment_options(b""))
    assert b.option_for_segment(syn=True, ack=True) == b""
    assert b.outcome == Fallback(FallbackReason.NO_ENO)


def test_fig11_syn_ack_option_stripped() -> None:
    a = ENOEndpoint.active(syn_option(None, X, Y))
    b = ENOEndpoint.passive([X])
    deliver(a, b, syn=True, ack=False)
    assert b.option_for_segment(syn=True, ack=True) == bytes.fromhex("45040121")
    a.on_received(syn=True, ack=True, options=segment_options(b""))  # stripped on the path
    ack = a.option_for_segment(syn=False, ack=True)
    assert ack == b""
    b.on_received(syn=False, ack=True, options=segment_options(ack))
    assert a.outcome == b.outcome == Fallback(FallbackReason.NO_ENO)
    assert not a.encrypting and not b.encrypting
    assert b.option_for_segment(syn=False, ack=True) == b""


def test_fig12_simultaneous_open() -> None:
    a = ENOEndpoint.active(syn_option(None, Y, X))
    b = ENOEndpoint.active(syn_option(0x01, X, Y, Z))  # b=1 configured before connecting
    a_syn = a.option_for_segment(syn=True, ack=False)
    b_syn = b.option_for_segment(syn=True, ack=False)
    assert (a_syn, b_syn) == (bytes.fromhex("45042321"), bytes.fromhex("450601212324"))
    a.on_received(syn=True, ack=False, options=segment_options(b_syn))
    b.on_received(syn=True, ack=False, options=segment_options(a_syn))
    a_syn_ack = a.option_for_segment(syn=True, ack=True)
    b_syn_ack = b.option_for_segment(syn=True, ack=True)
    assert (a_syn_ack, b_syn_ack) == (a_syn, b_syn)  # identical to the SYNs (§4.6)
    a.on_received(syn=True, ack=True, options=segment_options(b_syn_ack))
    b.on_received(syn=True, ack=True, options=segment_options(a_syn_ack))
    assert a.encrypting and b.encrypting
    assert a.negotiated is not None and b.negotiated is not None
    assert a.negotiated.tep == b.negotiated.tep == Y  # last valid TEP in B's option
    assert (a.negotiated.role, b.negotiated.role) == (Role.A, Role.B)
    assert a.negotiated.transcript == b.negotiated.transcript == a_syn + b_syn
    assert a.option_for_segment(syn=False, ack=True) == b"\x45\x02"  # until a non-SYN arrives


@pytest.mark.parametrize("gopt", [None, 0x00, 0x01])
def test_simultaneous_open_with_equal_b_falls_back(gopt: int | None) -> None:
    b_gopt = 0x01 if gopt == 0x01 else None
    a = ENOEndpoint.active(syn_option(gopt, Y))
    b = ENOEndpoint.active(syn_option(b_gopt, Y))
    a_syn = a.option_for_segment(syn=True, ack=False)
    b_syn = b.option_for_segment(syn=True, ack=False)
    a.on_received(syn=True, ack=False, options=segment_options(b_syn))
    b.on_received(syn=True, ack=False, options=segment_options(a_syn))
    assert a.outcome == b.outcome == Fallback(FallbackReason.ROLE_CONFLICT)
    # §4.6: an active opener MAY omit ENO from its SYN-ACK once ENO is disabled.
    assert a.option_for_segment(syn=True, ack=True) == b""


# --- negotiate -------------------------------------------------------------------------------


def test_no_peer_option() -> None:
    assert negotiate(syn_option(None, Y), None) == Fallback(FallbackReason.NO_ENO)


def test_active_opener_with_b_set_against_passive_opener() -> None:
    a_syn = syn_option(0x01, Y)
    assert passive_open(a_syn, [Y]) == (None, Fallback(FallbackReason.ROLE_CONFLICT))
    assert negotiate(a_syn, syn_option(0x01, Y)) == Fallback(FallbackReason.ROLE_CONFLICT)


def test_echoed_syn_option_is_a_role_conflict() -> None:
    a_syn = syn_option(None, X, Y)
    assert negotiate(a_syn, a_syn) == Fallback(FallbackReason.ROLE_CONFLICT)


def test_z_bits_do_not_change_roles() -> None:
    result = negotiate(syn_option(0x1C, Y), syn_option(0x1D, Y))
    assert isinstance(result, Negotiated) and result.role is Role.A and result.peer_gopt == 0x1D


@pytest.mark.parametrize(("peer_gopt", "ok"), [(0x01, False), (0x03, True)])
def test_aa_mandatory(peer_gopt: int, ok: bool) -> None:
    result = negotiate(syn_option(0x02, Y), syn_option(peer_gopt, Y), aa_mandatory=True)
    if ok:
        assert isinstance(result, Negotiated) and result.peer_a == 1
    else:
        assert result == Fallback(FallbackReason.AA_MANDATORY)


def test_aa_bit_is_reported_without_mandatory_mode() -> None:
    result = negotiate(syn_option(0x01, Y), syn_option(0x02, Y))
    assert isinstance(result, Negotiated) and result.peer_a == 1 and result.role is Role.B


@pytest.mark.parametrize(
    ("local", "peer"),
    [(syn_option(None, Y), syn_option(0x01)), (syn_option(None), syn_option(0x01, Y))],
)
def test_vacuous_option_on_either_side(local: SynOption, peer: SynOption) -> None:
    assert negotiate(local, peer) == Fallback(FallbackReason.VACUOUS)


def test_negotiated_tep_is_the_last_valid_one_in_b_option() -> None:
    b_option = syn_option(0x01, X, Y, Z)
    for a_option in (syn_option(None, X, Y, Z), syn_option(None, Z, Y, X)):
        result = negotiate(a_option, b_option)
        assert isinstance(result, Negotiated) and result.tep == Z  # A's order plays no part
    result = negotiate(syn_option(None, Y, X), b_option)
    assert isinstance(result, Negotiated) and result.tep == Y


def test_no_common_tep() -> None:
    assert negotiate(syn_option(None, X), syn_option(0x01, Y)) == Fallback(
        FallbackReason.NO_COMMON_TEP
    )


def test_repeated_tep_is_invalid_unless_the_tep_allows_it() -> None:
    a_option = syn_option(None, X, Y, Y)
    b_option = syn_option(0x01, X, Y)
    result = negotiate(a_option, b_option)
    assert isinstance(result, Negotiated) and result.tep == X
    result = negotiate(a_option, b_option, repeatable=frozenset({Y}))
    assert isinstance(result, Negotiated) and result.tep == Y


def test_repeated_tep_in_b_option_counts_at_its_last_position() -> None:
    b_option = syn_option(0x01, Y, X, Y)
    result = negotiate(syn_option(None, X, Y), b_option, repeatable=frozenset({Y}))
    assert isinstance(result, Negotiated) and result.tep == Y
    result = negotiate(syn_option(None, X, Y), b_option)
    assert isinstance(result, Negotiated) and result.tep == X


def test_is_valid_callback_rules_out_teps() -> None:
    def only_x(a_sub: Suboption, b_sub: Suboption) -> bool:
        return a_sub.tep == X

    result = negotiate(syn_option(None, X, Y), syn_option(0x01, X, Y), is_valid=only_x)
    assert isinstance(result, Negotiated) and result.tep == X
    assert negotiate(syn_option(None, Y), syn_option(0x01, Y), is_valid=only_x) == Fallback(
        FallbackReason.NO_COMMON_TEP
    )


# --- tcpcrypt resumption (RFC 8548 §3.5) -----------------------------------------------------


def a_resumption_offer(nonce: bytes = b"\xaa" * 8) -> SynOption:
    return syn_option(None, make_resumption_suboption(Y, HALF_A, nonce))


def test_v_bit_plays_no_part_in_the_choice() -> None:
    """A offers resumption, B answers the TEP fresh: a fresh key exchange follows (§4.5)."""
    a_syn = a_resumption_offer()
    answer, at_b = passive_open(a_syn, [Y])
    assert answer is not None and answer.raw == bytes.fromhex("45040123")
    at_a = negotiate(a_syn, answer, is_valid=TcpcryptValidity(RESUME_ID))
    assert isinstance(at_a, Negotiated) and isinstance(at_b, Negotiated)
    assert at_a.tep == at_b.tep == Y and at_a.tep_byte == 0x23 and not at_a.resumed
    assert at_a.transcript == at_b.transcript


def test_passive_opener_resumes_from_its_cache() -> None:
    b_sub = make_resumption_suboption(Y, HALF_B, b"\xbb" * 7)
    offers: list[Suboption] = []

    def resume(a_sub: Suboption) -> Suboption | None:
        offers.append(a_sub)
        return b_sub

    a_syn = a_resumption_offer()
    answer, at_b = passive_open(a_syn, [X, Y], resume=resume)
    assert offers == [a_syn.suboptions[0]]
    assert answer is not None and answer.suboptions == (b_sub,) and answer.gopt == 0x01
    assert len(answer.raw) == 2 + 1 + 1 + 9 + 7
    at_a = negotiate(a_syn, answer, is_valid=TcpcryptValidity(RESUME_ID))
    assert isinstance(at_a, Negotiated) and isinstance(at_b, Negotiated)
    assert at_a.resumed and at_b.resumed
    assert at_a.tep_byte == at_b.tep_byte == 0xA3
    assert at_a.transcript == at_b.transcript == a_syn.raw + answer.raw
    assert (at_a.a_suboption, at_a.b_suboption) == (a_syn.suboptions[0], b_sub)


def test_passive_opener_cache_miss_answers_fresh() -> None:
    answer, outcome = passive_open(a_resumption_offer(), [Y], resume=lambda sub: None)
    assert answer is not None and answer.suboptions == (Suboption(Y),)
    assert isinstance(outcome, Negotiated) and not outcome.resumed


def test_resume_hook_answer_must_be_a_resumption_suboption_of_that_tep() -> None:
    with pytest.raises(ValueError):
        passive_open(a_resumption_offer(), [Y], resume=lambda sub: Suboption(Y))
    with pytest.raises(ValueError):
        passive_open(
            a_resumption_offer(), [Y], resume=lambda sub: make_resumption_suboption(X, HALF_B, b"")
        )


@pytest.mark.parametrize(
    "validity", [TcpcryptValidity(), TcpcryptValidity(bytes(18)), TcpcryptValidity(HALF_A * 2)]
)
def test_active_opener_ignores_a_non_matching_resumption_answer(validity: TcpcryptValidity) -> None:
    answer = syn_option(0x01, make_resumption_suboption(Y, HALF_B, b"\xbb"))
    result = negotiate(a_resumption_offer(), answer, is_valid=validity)
    assert result == Fallback(FallbackReason.RESUME_MISMATCH)


def test_resumption_answer_to_a_fresh_offer_is_invalid() -> None:
    answer = syn_option(0x01, make_resumption_suboption(Y, HALF_B, b""))
    result = negotiate(syn_option(None, Y), answer, is_valid=TcpcryptValidity(RESUME_ID))
    assert result == Fallback(FallbackReason.RESUME_MISMATCH)


def test_halves_in_the_other_order_match_when_roles_swapped() -> None:
    """A host that was B in the original session may be A now: it sends the second half."""
    a_syn = syn_option(None, make_resumption_suboption(Y, HALF_B, b"\x01"))
    answer = syn_option(0x01, make_resumption_suboption(Y, HALF_A, b"\x02"))
    result = negotiate(answer, a_syn, is_valid=TcpcryptValidity(RESUME_ID))
    assert isinstance(result, Negotiated) and result.resumed and result.role is Role.B


def test_short_resumption_data_is_a_fresh_offer() -> None:
    a_syn = syn_option(None, Suboption(Y, True, bytes(8)))
    answer, outcome = passive_open(a_syn, [Y], resume=lambda sub: pytest.fail("not an offer"))
    assert answer is not None and answer.suboptions == (Suboption(Y),)
    assert isinstance(outcome, Negotiated) and not outcome.resumed


def test_suboption_data_over_17_bytes_makes_only_its_tep_invalid() -> None:
    """Not a resumption suboption, not a fresh offer: RFC 8547 §4.5 item 2 rules the TEP out."""
    too_long = Suboption(Y, True, bytes(18))
    answer, outcome = passive_open(syn_option(None, X, too_long), [X, Y])
    assert answer is not None and answer.suboptions == (Suboption(X),)
    assert isinstance(outcome, Negotiated) and outcome.tep == X
    answer, outcome = passive_open(syn_option(None, too_long), [Y])
    assert answer is not None and answer.vacuous
    assert outcome == Fallback(FallbackReason.NO_COMMON_TEP)
    assert negotiate(syn_option(None, too_long), syn_option(0x01, Y)) == Fallback(
        FallbackReason.NO_COMMON_TEP
    )


def test_simultaneous_open_may_resume() -> None:
    a_option = syn_option(None, make_resumption_suboption(Y, HALF_A, b"\x01" * 8))
    b_option = syn_option(0x01, make_resumption_suboption(Y, HALF_B, b"\x02" * 4))
    validity = TcpcryptValidity(RESUME_ID)
    at_a = negotiate(a_option, b_option, is_valid=validity)
    at_b = negotiate(b_option, a_option, is_valid=validity)
    assert isinstance(at_a, Negotiated) and isinstance(at_b, Negotiated)
    assert at_a.resumed and at_b.resumed and at_a.tep_byte == 0xA3


# --- passive answer --------------------------------------------------------------------------


def test_passive_answer_picks_b_highest_priority_tep_offered_by_a() -> None:
    a_syn = syn_option(None, Z, X, Y)
    assert passive_answer(a_syn, [X, Y]) == syn_option(0x01, Y)
    assert passive_answer(a_syn, [Y, X]) == syn_option(0x01, X)
    assert passive_answer(a_syn, [0x30, Z, 0x31]) == syn_option(0x01, Z)


def test_passive_answer_forces_b_and_sets_a_in_mandatory_mode() -> None:
    assert passive_answer(syn_option(None, Y), [Y], gopt=0x00) == syn_option(0x01, Y)
    assert passive_answer(syn_option(0x02, Y), [Y], aa_mandatory=True) == syn_option(0x03, Y)


@pytest.mark.parametrize("gopt", [0x04, 0x10, 0x20, -1])
def test_passive_answer_rejects_z_bits_or_bad_global(gopt: int) -> None:
    with pytest.raises(ValueError):
        passive_answer(syn_option(None, Y), [Y], gopt=gopt)
    with pytest.raises(ValueError):
        ENOEndpoint.passive([Y], gopt=gopt)


def test_passive_answer_to_a_vacuous_syn_is_vacuous() -> None:
    answer, outcome = passive_open(syn_option(None), [Y])
    assert answer == syn_option(0x01) and outcome == Fallback(FallbackReason.VACUOUS)


def test_passive_answer_none_without_eno() -> None:
    assert passive_answer(None, [Y]) is None


def test_passive_answer_skips_repeated_tep_unless_allowed() -> None:
    a_syn = syn_option(None, X, Y, Y)
    assert passive_answer(a_syn, [X, Y]) == syn_option(0x01, X)
    assert passive_answer(a_syn, [X, Y], repeatable=frozenset({Y})) == syn_option(0x01, Y)


# --- SYN data (§4.7) -------------------------------------------------------------------------

FRESH = Negotiated(
    role=Role.B,
    tep=Y,
    tep_byte=Y,
    transcript=b"",
    a_option=syn_option(None, X, Y),
    b_option=syn_option(0x01, Y),
    a_suboption=Suboption(Y),
    b_suboption=Suboption(Y),
    peer_gopt=0,
    resumed=False,
)


def test_syn_without_eno_is_not_governed_by_eno() -> None:
    assert may_accept_syn_data([MSS], Fallback(FallbackReason.NO_ENO))


@pytest.mark.parametrize(
    "outcome", [FRESH, Fallback(FallbackReason.NO_COMMON_TEP), Fallback(FallbackReason.MALFORMED)]
)
def test_tcpcrypt_never_accepts_syn_eno_data(outcome: Negotiated | Fallback) -> None:
    assert not may_accept_syn_data(segment_options(syn_option(None, X, Y).raw), outcome)


def test_syn_data_for_a_tep_that_defines_it() -> None:
    teps = frozenset({Y})
    syn = segment_options(syn_option(None, X, Y).raw)
    assert may_accept_syn_data(syn, FRESH, syn_data_teps=teps)
    assert not may_accept_syn_data(syn, FRESH, syn_data_teps=teps, conflicting_option=True)
    assert not may_accept_syn_data([*syn, (34, b"\x01" * 8)], FRESH, syn_data_teps=teps)
    assert may_accept_syn_data([*syn, (34, b"")], FRESH, syn_data_teps=teps)  # empty TFO
    other_syn_tep = segment_options(syn_option(None, Y, X).raw)
    assert not may_accept_syn_data(other_syn_tep, FRESH, syn_data_teps=teps)
    assert not may_accept_syn_data([(69, b"\x80")], FRESH, syn_data_teps=teps)
    assert not may_accept_syn_data(syn, None, syn_data_teps=teps)


@pytest.mark.parametrize(
    ("own_syn", "outcome", "acked", "syn_ack_eno", "allow_unacked", "abort"),
    [
        (syn_option(None, X, Y), FRESH, True, True, False, False),  # SYN TEP negotiated
        (syn_option(None, Y, X), FRESH, True, True, False, True),  # another TEP negotiated
        (syn_option(None, Y, X), FRESH, False, True, False, False),  # not ACKed: no harm
        (syn_option(None, X, Y), Fallback(FallbackReason.VACUOUS), True, True, False, True),
        (syn_option(None, X, Y), Fallback(FallbackReason.NO_ENO), False, False, False, True),
        (syn_option(None, X, Y), Fallback(FallbackReason.NO_ENO), False, False, True, False),
        (syn_option(None, X, Y), Fallback(FallbackReason.NO_ENO), True, False, True, True),
    ],
)
def test_must_abort_for_syn_data(
    own_syn: SynOption,
    outcome: Negotiated | Fallback,
    acked: bool,
    syn_ack_eno: bool,
    allow_unacked: bool,
    abort: bool,
) -> None:
    assert (
        must_abort_for_syn_data(
            own_syn,
            outcome,
            syn_data_acked=acked,
            syn_ack_had_eno=syn_ack_eno,
            allow_unacked=allow_unacked,
        )
        is abort
    )


# --- ENOEndpoint per-segment rules (§4.6) -----------------------------------------------------


def test_syn_retransmissions_carry_identical_options() -> None:
    a = ENOEndpoint.active(syn_option(None, X, Y))
    first = a.option_for_segment(syn=True, ack=False)
    assert a.option_for_segment(syn=True, ack=False) == first
    b = ENOEndpoint.passive([Y])
    b.on_received(syn=True, ack=False, options=segment_options(first))
    syn_ack = b.option_for_segment(syn=True, ack=True)
    b.on_received(syn=True, ack=False, options=segment_options(first))  # retransmitted SYN
    assert b.option_for_segment(syn=True, ack=True) == syn_ack
    assert isinstance(b.outcome, Negotiated)


def test_passive_opener_repeats_its_vacuous_answer() -> None:
    b = ENOEndpoint.passive([Z])
    b.on_received(syn=True, ack=False, options=segment_options(bytes.fromhex("45042123")))
    assert b.outcome == Fallback(FallbackReason.NO_COMMON_TEP)
    assert b.option_for_segment(syn=True, ack=True) == bytes.fromhex("450301")
    assert b.option_for_segment(syn=True, ack=True) == bytes.fromhex("450301")
    assert b.option_for_segment(syn=False, ack=True) == b""
    b.on_received(syn=False, ack=True, options=segment_options(b""))
    assert not b.encrypting


def test_altered_syn_option_is_malformed() -> None:
    b = ENOEndpoint.passive([X, Y])
    b.on_received(syn=True, ack=False, options=segment_options(bytes.fromhex("45042123")))
    b.on_received(syn=True, ack=False, options=segment_options(bytes.fromhex("45042321")))
    assert b.outcome == Fallback(FallbackReason.MALFORMED)
    assert b.option_for_segment(syn=True, ack=True) == b""


def test_syn_retransmitted_without_eno_disables_it() -> None:
    """§4.6: an active opener MAY drop ENO between SYN retransmissions."""
    b = ENOEndpoint.passive([Y])
    b.on_received(syn=True, ack=False, options=segment_options(bytes.fromhex("45042123")))
    b.on_received(syn=True, ack=False, options=segment_options(b""))
    assert b.outcome == Fallback(FallbackReason.NO_ENO)


@pytest.mark.parametrize(
    "options",
    [[(69, b"\x23"), (69, b"\x21")], [(69, b"\x81\xa3")]],
)
def test_malformed_or_duplicate_syn_option_disables_eno(options: list[tuple[int, bytes]]) -> None:
    b = ENOEndpoint.passive([Y])
    b.on_received(syn=True, ack=False, options=options)
    assert b.outcome == Fallback(FallbackReason.MALFORMED)
    assert b.option_for_segment(syn=True, ack=True) == b""


def test_passive_opener_needs_eno_in_the_first_ack() -> None:
    b = ENOEndpoint.passive([Y])
    b.on_received(syn=True, ack=False, options=segment_options(bytes.fromhex("450323")))
    b.option_for_segment(syn=True, ack=True)
    b.on_received(syn=False, ack=True, options=[MSS])
    assert b.outcome == Fallback(FallbackReason.NO_ENO) and not b.encrypting


def test_missing_eno_after_the_first_ack_does_not_matter() -> None:
    a = ENOEndpoint.active(syn_option(None, Y))
    a.option_for_segment(syn=True, ack=False)
    a.on_received(syn=True, ack=True, options=segment_options(bytes.fromhex("45040123")))
    a.option_for_segment(syn=False, ack=True)
    assert a.encrypting
    a.on_received(syn=False, ack=True, options=[MSS])
    a.on_received(syn=True, ack=True, options=[MSS])  # a late duplicate SYN-ACK, stripped
    assert a.encrypting and isinstance(a.outcome, Negotiated)


def test_active_opener_falls_back_on_an_early_non_syn_segment_without_eno() -> None:
    a = ENOEndpoint.active(syn_option(None, Y))
    a.option_for_segment(syn=True, ack=False)
    a.on_received(syn=False, ack=False, options=[])
    assert a.outcome == Fallback(FallbackReason.NO_ENO)
    a.on_received(syn=True, ack=True, options=segment_options(bytes.fromhex("45040123")))
    assert a.outcome == Fallback(FallbackReason.NO_ENO)


def test_passive_opener_sends_nothing_before_a_syn() -> None:
    b = ENOEndpoint.passive([Y])
    assert b.option_for_segment(syn=True, ack=True) == b""
    assert b.outcome is None and not b.disabled and not b.encrypting


def test_aa_mandatory_active_opener() -> None:
    a = ENOEndpoint.active(syn_option(0x02, Y), aa_mandatory=True)
    a.option_for_segment(syn=True, ack=False)
    a.on_received(syn=True, ack=True, options=segment_options(bytes.fromhex("45040123")))
    assert a.outcome == Fallback(FallbackReason.AA_MANDATORY)


def test_resumption_through_endpoints() -> None:
    b_sub = make_resumption_suboption(Y, HALF_B, b"\xbb" * 4)
    a = ENOEndpoint.active(a_resumption_offer(), is_valid=TcpcryptValidity(RESUME_ID))
    b = ENOEndpoint.passive([Y], resume=lambda sub: b_sub if sub.data[:9] == HALF_A else None)
    deliver(a, b, syn=True, ack=False)
    deliver(b, a, syn=True, ack=True)
    deliver(a, b, syn=False, ack=True)
    assert a.encrypting and b.encrypting
    assert a.negotiated is not None and b.negotiated is not None
    assert a.negotiated.resumed and b.negotiated.resumed
    assert a.negotiated.transcript == b.negotiated.transcript


# --- properties -----------------------------------------------------------------------------

small_teps = st.sampled_from([X, Y, Z])


@st.composite
def suboptions(draw: st.DrawFn) -> Suboption:
    tep = draw(small_teps)
    kind = draw(st.sampled_from(["fresh", "short", "resume_a", "resume_b", "long"]))
    if kind == "fresh":
        return Suboption(tep)
    if kind == "short":
        return Suboption(tep, True, draw(st.binary(max_size=8)))
    if kind == "long":
        return Suboption(tep, True, bytes(18))
    half = HALF_A if kind == "resume_a" else HALF_B
    return make_resumption_suboption(tep, half, draw(st.binary(max_size=8)))


@st.composite
def syn_options(draw: st.DrawFn) -> SynOption:
    gopt = draw(st.none() | st.integers(0, 0x1F))
    subs = draw(st.lists(suboptions(), max_size=4))
    # Only the last suboption may have data here; the others become fresh offers.
    subs = [Suboption(s.tep) for s in subs[:-1]] + subs[-1:]
    return build_syn_option(gopt, subs)


validities = st.sampled_from([TcpcryptValidity(), TcpcryptValidity(RESUME_ID)])


@settings(deadline=None)
@given(syn_options(), syn_options(), validities, st.frozensets(small_teps))
def test_random_pairs_negotiate_symmetrically(
    first: SynOption, second: SynOption, validity: TcpcryptValidity, repeatable: frozenset[int]
) -> None:
    one = negotiate(first, second, is_valid=validity, repeatable=repeatable)
    two = negotiate(second, first, is_valid=validity, repeatable=repeatable)
    assert type(one) is type(two)
    if isinstance(one, Negotiated):
        assert isinstance(two, Negotiated)
        assert {one.role, two.role} == {Role.A, Role.B}
        assert (one.tep, one.tep_byte, one.transcript, one.resumed) == (
            two.tep,
            two.tep_byte,
            two.transcript,
            two.resumed,
        )
        assert one.transcript == one.a_option.raw + one.b_option.raw
        assert one.tep in one.a_option.teps and one.tep in one.b_option.teps
        assert one.peer_gopt == second.global_suboption
    else:
        assert one == two


@settings(deadline=None)
@given(syn_options(), st.lists(small_teps, max_size=3, unique=True), st.booleans())
def test_passive_answer_agrees_with_the_active_opener(
    a_syn: SynOption, supported: list[int], aa_mandatory: bool
) -> None:
    answer, at_b = passive_open(a_syn, supported, aa_mandatory=aa_mandatory)
    if answer is None:
        assert isinstance(at_b, Fallback)
        return
    assert answer.b == 1 and len(answer.suboptions) <= 1
    at_a = negotiate(a_syn, answer)
    if isinstance(at_b, Negotiated):
        assert isinstance(at_a, Negotiated)
        assert (at_a.role, at_b.role) == (Role.A, Role.B)
        assert (at_a.tep, at_a.transcript) == (at_b.tep, at_b.transcript)
        assert at_a.tep in supported
    else:
        assert answer.vacuous and at_a == Fallback(FallbackReason.VACUOUS)


# --- outcomes remembered by option bytes -----------------------------------------------------

_TEPS = st.lists(st.sampled_from([0x20, X, Y, Z, 0x7F]), max_size=4)


@given(a_teps=_TEPS, b_teps=_TEPS, b_gopt=st.sampled_from([None, 0x00, 0x01, 0x03]),
       aa=st.booleans())
@settings(max_examples=200)
def test_remembered_outcomes_equal_fresh_ones(a_teps: list[int], b_teps: list[int],
                                              b_gopt: int | None, aa: bool) -> None:
    """negotiate and passive_open remember outcomes by the options' bytes and settings: with
    the outcome for one setting remembered, equal (not identical) options under every
    setting still get what the negotiation itself decides."""
    a_syn, b_syn = syn_option(None, *a_teps), syn_option(b_gopt, *b_teps)
    negotiate(a_syn, b_syn, aa_mandatory=aa)
    passive_open(a_syn, b_teps, aa_mandatory=aa)
    for mandatory in (aa, not aa):
        assert negotiate(parse_syn_option(a_syn.raw), parse_syn_option(b_syn.raw),
                         aa_mandatory=mandatory) == _negotiate(
            a_syn, b_syn, mandatory, TcpcryptValidity(), frozenset())
        for supported in (b_teps, b_teps[::-1]):
            own_gopt = 0x03 if mandatory else 0x01
            assert passive_open(parse_syn_option(a_syn.raw), list(supported),
                                aa_mandatory=mandatory) == _passive_open(
                a_syn, supported, own_gopt, mandatory, TcpcryptValidity(), None, frozenset())


def test_each_resumption_offer_asks_the_cache_again() -> None:
    """An offer's outcome depends on the cache (a secret is used once): never remembered."""
    asked: list[Suboption] = []
    b_sub = make_resumption_suboption(Y, HALF_B, b"\xbb")

    def resume(a_sub: Suboption) -> Suboption | None:
        asked.append(a_sub)
        return b_sub if len(asked) == 1 else None

    offer = a_resumption_offer()
    hit = passive_open(offer, [Y], resume=resume)[1]
    miss = passive_open(offer, [Y], resume=resume)[1]
    assert len(asked) == 2
    assert isinstance(hit, Negotiated) and hit.resumed
    assert isinstance(miss, Negotiated) and not miss.resumed


def test_a_malformed_option_is_refused_every_time() -> None:
    bad = bytes.fromhex("4503") + b"\x9f"   # a length byte that ends the option (§4.4)
    for _ in range(2):
        with pytest.raises(ENOParseError):
            parse_syn_option(bad)


@pytest.mark.parametrize("resumes", [False, True])
@given(teps=st.lists(st.sampled_from([X, Y, Z]), min_size=1, max_size=5))
@settings(max_examples=60)
def test_passive_answered_rebuilds_the_endpoint_the_syn_made(resumes: bool,
                                                             teps: list[int]) -> None:
    """From A's option and B's answer alone (a half-open record keeps nothing else), the
    endpoint and outcome come out as receiving the SYN made them, fresh or resumed."""
    subs = [Suboption(tep) for tep in teps]
    if resumes:
        subs.append(make_resumption_suboption(Y, HALF_A, b"\xaa" * 8))
    received = build_syn_option(None, subs)
    b_sub = make_resumption_suboption(Y, HALF_B, b"\xbb" * 8)
    endpoint = ENOEndpoint.passive([X, Z, Y], resume=(lambda sub: b_sub) if resumes else None)
    endpoint.on_received(syn=True, ack=False, options=[MSS, (69, received.raw[2:])])
    if endpoint.negotiated is None:
        return   # no record is made for a SYN that does not negotiate
    rebuilt = ENOEndpoint.passive_answered(received, endpoint.local_option)
    assert rebuilt.outcome == endpoint.outcome and rebuilt.negotiated.resumed == (
        resumes and endpoint.negotiated.tep == Y and teps.count(Y) == 0)
    for name in ("local_option", "peer_option", "is_passive", "encrypting", "disabled"):
        assert getattr(rebuilt, name) == getattr(endpoint, name), name
    for endpoint_now in (rebuilt, endpoint):   # both go on alike: A's ACK turns encryption on
        endpoint_now.option_for_segment(syn=True, ack=True)
        endpoint_now.on_received(syn=False, ack=True, options=[(69, b"")])
    assert rebuilt.encrypting and endpoint.encrypting
