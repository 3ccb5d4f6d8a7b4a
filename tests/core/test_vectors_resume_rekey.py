"""The core against the rekeying and resumption vectors (tests/vectors/tcpcrypt.json).

tools/make_vectors.py derives the ``rekeying`` and ``resumption`` lists from RFC 8548's
formulas without calling :mod:`tcpcryptd` (schema: tests/vectors/README.md). Here the core
has to reproduce them: its key schedule for generations j = 0..3 (§3.3), the §3.8 rekey bit
and reply obligation while sealing and opening frames under each generation, and for
resumption (§3.5) the next session secret, resume[i], the identifier half and nonce each host
puts in its SYN option, the passive opener's cache lookup and answer, sn[i], the resumed
session ID (§3.4) and the resumed session's keys and frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tcpcryptd.core.aead import TrafficKey, aead_algorithm
from tcpcryptd.core.eno import (
    Suboption,
    build_syn_option,
    make_resumption_suboption,
    parse_resumption,
    parse_syn_option,
)
from tcpcryptd.core.errors import FrameAuthError
from tcpcryptd.core.frame import decode_frame
from tcpcryptd.core.keys import (
    KeySchedule,
    first_master_key,
    next_master_key,
    next_session_secret,
    resumption_id,
    session_id,
)
from tcpcryptd.core.negotiation import (
    Negotiated,
    Role,
    TcpcryptValidity,
    negotiate,
    passive_open,
)
from tcpcryptd.core.resumption import SessionCache
from tcpcryptd.core.session import Session
from tcpcryptd.core.tep import TEP_ID_MASK

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "tests" / "vectors" / "tcpcrypt.json").read_text()
)
REKEYING: list[dict[str, Any]] = VECTORS["rekeying"]
RESUMPTION: list[dict[str, Any]] = VECTORS["resumption"]
#: The resumed sessions of one original ss[0], in order of i.
CHAINS: dict[str, list[dict[str, Any]]] = {}
for _case in RESUMPTION:
    CHAINS.setdefault(_case["name"].rsplit("-", 1)[0], []).append(_case)
ALL_TEPS = (0x21, 0x22, 0x23, 0x24)
ALL_AEADS = (0x0001, 0x0002, 0x0010)
#: The session caches' clock; how each host's cache names its peer.
NOW = 0.0
PEER_OF = {"A": "host-b", "B": "host-a"}


def unhex(case: dict[str, Any], field: str) -> bytes:
    return bytes.fromhex(case[field])


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]


def other(role: str) -> str:
    return "B" if role == "A" else "A"


def fresh_session(role: str, case: dict[str, Any], ss: bytes) -> Session:
    """A session on ss[0] (sn[0] empty); host A encrypts with k_ab (RFC 8548 §3.3)."""
    return Session(role, case["tep"], aead_algorithm(case["aead"]), ss, b"",
                   sends_with_k_ab=role == "A")


# --- What the vectors cover -------------------------------------------------------------------


def test_every_tep_aead_pair_is_rekeyed_and_resumed() -> None:
    pairs = {(t, a) for t in ALL_TEPS for a in ALL_AEADS}
    assert {(c["tep"], c["aead"]) for c in REKEYING} == pairs
    assert {(c["tep"], c["aead"]) for c in RESUMPTION} == pairs
    for chain in CHAINS.values():
        assert [c["i"] for c in chain] == [1, 2]
        assert {c["opener"] for c in chain} == {"A", "B"}, "each original role opens once"


def test_rekeying_frames_cover_the_generation_rules() -> None:
    """Every generation j > 0 carries frames with rekey = 1 and with rekey = 0; a reply is
    owed, a crossing rekey owes none, and a host that sent FINp owes none (RFC 8548 §3.8)."""
    for case in REKEYING:
        frames = case["frames"]
        for generation in (1, 2, 3):
            controls = {f["control"] for f in frames if f["generation"] == generation}
            assert controls == {0, 1}, (case["name"], generation)
        assert any(f["obliges_reply"] for f in frames)
        assert any(f["in_flight_with_next"] for f in frames)
        assert any(f["initiates_rekey"] and not f["obliges_reply"] for f in frames)
        assert max(f["offset"] for f in frames) >= 1 << 32, "frame IDs use their high bytes"


# --- Key schedule of later generations (RFC 8548 §3.3, §3.8) -----------------------------------


def check_key_sets(case: dict[str, Any], ss: bytes, sn: bytes) -> None:
    """mk[j] and (k_ab[j], k_ba[j]) for j = 0..3, by the functions and by KeySchedule."""
    mk = [first_master_key(ss, sn)]
    while len(mk) < len(case["mk"]):
        mk.append(next_master_key(mk[-1]))
    assert [m.hex() for m in mk] == case["mk"]
    schedule = KeySchedule(ss, sn, aead_algorithm(case["aead"]).traffic_key_len)
    keys = [schedule.keys(j) for j in range(len(case["k_ab"]))]
    assert [k_ab.hex() for k_ab, _ in keys] == case["k_ab"]
    assert [k_ba.hex() for _, k_ba in keys] == case["k_ba"]


@pytest.mark.parametrize("case", REKEYING, ids=ids(REKEYING))
def test_rekeying_key_schedule(case: dict[str, Any]) -> None:
    check_key_sets(case, unhex(case, "ss"), b"")


@pytest.mark.parametrize("case", REKEYING, ids=ids(REKEYING))
def test_rekeying_session_id(case: dict[str, Any]) -> None:
    assert session_id(case["tep"], unhex(case, "ss"), b"") == unhex(case, "session_id")


@pytest.mark.parametrize("case", REKEYING, ids=ids(REKEYING))
def test_rekeying_session_traffic_keys(case: dict[str, Any]) -> None:
    session = fresh_session("A", case, unhex(case, "ss"))
    for j in range(len(case["k_ab"])):
        assert session.traffic_keys(j) == (bytes.fromhex(case["k_ab"][j]),
                                           bytes.fromhex(case["k_ba"][j]))


# --- Frames under generation j (RFC 8548 §3.6, §3.8, §4.2) -------------------------------------


def replay(frames: list[dict[str, Any]], sessions: dict[str, Session]) -> None:
    """Drive two core sessions through the vector's frames, in the vector's order.

    ``sessions`` are keyed by the role in the ss[0] session (the frames' ``sender``). Each
    frame is sealed by its sender -- after ``initiate_rekey`` when the frame initiates one --
    and opened by the other host at once, or, when it is ``in_flight_with_next``, right
    after the next frame has been sealed. The core's wire bytes, generations and §3.8 reply
    obligation have to be the vector's.
    """
    pending: list[dict[str, Any]] = []
    for frame in frames:
        sender = sessions[frame["sender"]]
        plaintext = bytes.fromhex(frame["plaintext"])
        if frame["initiates_rekey"]:
            sender.initiate_rekey()
        wire = sender.seal(frame["offset"], plaintext[1:], fin=bool(plaintext[0] & 1))
        assert wire.hex() == frame["frame"], f"frame at offset {frame['offset']}"
        assert sender.send_generation == frame["generation"]
        pending.append(frame)
        if frame["in_flight_with_next"]:
            continue
        for sent in pending:
            receiver = sessions[other(sent["sender"])]
            received = receiver.open(sent["offset"], bytes.fromhex(sent["frame"]))
            sent_plaintext = bytes.fromhex(sent["plaintext"])
            assert received.data == sent_plaintext[1:]
            assert received.fin == bool(sent_plaintext[0] & 1)
            assert received.rekey == bool(sent["control"] & 1)
            assert received.generation == sent["generation"]
            assert received.needs_rekey_reply == sent["obliges_reply"]
        pending.clear()
    assert not pending


@pytest.mark.parametrize("case", REKEYING, ids=ids(REKEYING))
def test_rekeying_frames_sealed_and_opened_by_sessions(case: dict[str, Any]) -> None:
    ss = unhex(case, "ss")
    sessions = {role: fresh_session(role, case, ss) for role in ("A", "B")}
    replay(case["frames"], sessions)
    assert sessions["A"].local_generation == sessions["B"].local_generation == 3


@pytest.mark.parametrize("case", REKEYING + RESUMPTION, ids=ids(REKEYING + RESUMPTION))
def test_frames_open_only_under_their_generation(case: dict[str, Any]) -> None:
    """Each frame decodes with the sender's traffic key of its generation (nonce = frame_ID XOR
    NR, AD = control | clen) and fails AEAD under every other generation's key."""
    aead = aead_algorithm(case["aead"])
    for frame in case["frames"]:
        keys = case["k_ab"] if frame["sender"] == "A" else case["k_ba"]
        wire = bytes.fromhex(frame["frame"])
        plaintext = bytes.fromhex(frame["plaintext"])
        for generation, material in enumerate(keys):
            key = TrafficKey(aead, bytes.fromhex(material))
            if generation == frame["generation"]:
                decoded = decode_frame(key, frame["offset"], wire, generation=generation)
                assert (decoded.data, decoded.fin) == (plaintext[1:], bool(plaintext[0] & 1))
                assert decoded.rekey == bool(frame["control"] & 1)
                assert key.open(frame["offset"], wire[3:], wire[:3]) == plaintext
            else:
                with pytest.raises(FrameAuthError):
                    decode_frame(key, frame["offset"], wire, generation=generation)


# --- Resumption (RFC 8548 §3.4, §3.5) ----------------------------------------------------------


@pytest.mark.parametrize("case", RESUMPTION, ids=ids(RESUMPTION))
def test_resumption_secrets(case: dict[str, Any]) -> None:
    """ss[i] = CPRF(ss[i-1], CONST_NEXTK, K_LEN), resume[i] = CPRF(ss[i], CONST_RESUME, 18)."""
    ss = next_session_secret(unhex(case, "ss_previous"))
    assert ss == unhex(case, "ss")
    assert resumption_id(ss) == unhex(case, "resume")
    assert next_session_secret(ss) == unhex(case, "ss_next")


@pytest.mark.parametrize("case", RESUMPTION, ids=ids(RESUMPTION))
def test_resumption_suboptions(case: dict[str, Any]) -> None:
    """The opener's SYN and the passive opener's SYN-ACK carry the identifier half of their
    host's original role and its nonce (Figures 2 and 3), as the core builds and parses them."""
    tep, resume = case["tep"], unhex(case, "resume")
    halves = {"A": resume[:9], "B": resume[9:]}
    nonces = {"A": unhex(case, "nonce_a"), "B": unhex(case, "nonce_b")}
    for field, role in (("syn_eno", case["opener"]), ("syn_ack_eno", other(case["opener"]))):
        option = parse_syn_option(unhex(case, field))
        assert option.raw.hex() == case[field]
        offer = option.suboptions_for(tep)[-1]
        assert parse_resumption(offer) == (halves[role], nonces[role])
        assert offer == make_resumption_suboption(tep, halves[role], nonces[role])


@pytest.mark.parametrize("case", RESUMPTION, ids=ids(RESUMPTION))
def test_resumed_session_keys_and_id(case: dict[str, Any]) -> None:
    """Session.resume on ss[i]: sn[i] = nonce_a | nonce_b by original role, whichever host
    opens; session ID = TEP byte with v = 1 | CPRF(ss[i], CONST_SESSID | sn[i], 32)."""
    ss, sn = unhex(case, "ss"), unhex(case, "sn")
    assert sn == unhex(case, "nonce_a") + unhex(case, "nonce_b")
    assert session_id(case["tep"] | 0x80, ss, sn) == unhex(case, "session_id")
    check_key_sets(case, ss, sn)
    nonces = {"A": unhex(case, "nonce_a"), "B": unhex(case, "nonce_b")}
    for original_role in ("A", "B"):
        role = "A" if original_role == case["opener"] else "B"
        session = Session.resume(role, case["tep"], aead_algorithm(case["aead"]), ss,
                                 sends_with_k_ab=original_role == "A",
                                 local_nonce=nonces[original_role],
                                 peer_nonce=nonces[other(original_role)])
        assert session.sn == sn
        assert session.session_id == unhex(case, "session_id")
        for j in range(len(case["k_ab"])):
            assert session.traffic_keys(j) == (bytes.fromhex(case["k_ab"][j]),
                                               bytes.fromhex(case["k_ba"][j]))


def resume_through_caches(case: dict[str, Any], previous: dict[str, Session],
                          index: int) -> dict[str, Session]:
    """Both hosts cache ss[i] after the session on ss[i-1] (``previous``), the opener offers
    it in its SYN, the passive opener finds it by the opener's half and answers, both
    negotiate resumption and resume; returns the two resumed sessions by original role."""
    tep, opener = case["tep"], case["opener"]
    passive = other(opener)
    caches = {role: SessionCache() for role in ("A", "B")}
    entries = {role: caches[role].store_session(PEER_OF[role], previous[role], index=index,
                                                now=NOW) for role in ("A", "B")}
    for entry in entries.values():
        assert (entry.index, entry.ss.hex(), entry.resume_id.hex()) == (
            case["i"], case["ss"], case["resume"])
    nonces = {"A": unhex(case, "nonce_a"), "B": unhex(case, "nonce_b")}
    offered = caches[opener].for_peer(PEER_OF[opener], NOW)
    assert offered is entries[opener]
    fresh = [Suboption(t) for t in parse_syn_option(unhex(case, "syn_eno")).teps if t != tep]
    syn = build_syn_option(None, [*fresh, make_resumption_suboption(
        tep, offered.own_half, nonces[opener])])
    assert syn.raw.hex() == case["syn_eno"]

    def lookup(offer: Suboption) -> Suboption | None:
        parsed = parse_resumption(offer)
        assert parsed is not None
        entry = caches[passive].by_peer_half(parsed[0], offer.tep, NOW)
        assert entry is entries[passive] and caches[passive].take(entry)
        return make_resumption_suboption(tep, entry.own_half, nonces[passive])

    supported = [*(s.tep for s in fresh), tep]
    syn_ack, passive_outcome = passive_open(parse_syn_option(syn.raw), supported, resume=lookup)
    assert syn_ack is not None and syn_ack.raw.hex() == case["syn_ack_eno"]
    opener_outcome = negotiate(syn, parse_syn_option(syn_ack.raw),
                               is_valid=TcpcryptValidity(resume_id=offered.resume_id))
    assert caches[opener].take(offered)
    outcomes = {opener: opener_outcome, passive: passive_outcome}
    sessions = {}
    for role, outcome in outcomes.items():
        assert isinstance(outcome, Negotiated) and outcome.resumed
        assert outcome.role == (Role.A if role == opener else Role.B)
        assert outcome.tep_byte == tep | 0x80 == unhex(case, "session_id")[0]
        sessions[role] = entries[role].resume_session(
            outcome.role, local_nonce=nonces[role], peer_nonce=nonces[other(role)])
        assert sessions[role].session_id.hex() == case["session_id"]
        assert sessions[role].tep_byte & TEP_ID_MASK == tep
    return sessions


@pytest.mark.parametrize("chain", list(CHAINS.values()), ids=list(CHAINS))
def test_resumption_chain_through_session_caches(chain: list[dict[str, Any]]) -> None:
    """From a fresh session on ss[0], resume ss[1] (the original A opens), then from that
    session ss[2] (the original B opens), each through both hosts' caches, the SYN options
    and the negotiation, then replay the resumed session's frames."""
    first = chain[0]
    ss0 = unhex(first, "ss_previous")
    sessions = {role: fresh_session(role, first, ss0) for role in ("A", "B")}
    for index, case in enumerate(chain):
        sessions = resume_through_caches(case, sessions, index)
        replay(case["frames"], sessions)
