#!/usr/bin/env python3
"""Generate the tcpcrypt test vectors by running our protocol core.

    .venv/bin/python tools/make_vectors.py > tests/vectors/tcpcrypt.json     (make vectors)

RFC 8547 and RFC 8548 publish no test vectors. This script makes them by driving
:mod:`tcpcryptd.core` exactly as two hosts would: host A's SYN option, host B's answer
(``passive_open``), ``negotiate`` on A, ``InitiatorHandshake``/``ResponderHandshake`` for
Init1/Init2, then ``Session.seal`` on one side and ``Session.open`` on the other for every
frame, with fixed private keys and nonces derived from the case name. The output therefore
records what our implementation puts on the wire; tests/core/test_vectors.py proves every
value independently, and requires this script's output to equal the committed file byte for
byte. Schema and field meanings: tests/vectors/README.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any

from tcpcryptd.core.aead import TrafficKey
from tcpcryptd.core.constants import TEP, AEADId
from tcpcryptd.core.eno import (
    Suboption,
    SynOption,
    build_syn_option,
    make_resumption_suboption,
    parse_resumption,
    parse_syn_option,
)
from tcpcryptd.core.keys import next_session_secret, resumption_id
from tcpcryptd.core.negotiation import (
    Fallback,
    Negotiated,
    TcpcryptValidity,
    negotiate,
    passive_open,
)
from tcpcryptd.core.resumption import CacheEntry, SessionCache
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake, Session
from tcpcryptd.core.tep import key_agreement

TEP_NAMES = {
    TEP.ECDHE_P256: "p256",
    TEP.ECDHE_P521: "p521",
    TEP.ECDHE_CURVE25519: "x25519",
    TEP.ECDHE_CURVE448: "x448",
}
AEAD_NAMES = {
    AEADId.AES_128_GCM: "aes128gcm",
    AEADId.AES_256_GCM: "aes256gcm",
    AEADId.CHACHA20_POLY1305: "chacha20poly1305",
}
#: Host A offers every TEP; host B lists them in increasing priority, the case's TEP last.
A_OFFER = tuple(TEP_NAMES)
#: Host A offers every AEAD in Init1; host B prefers the case's AEAD (RFC 8548 §3.3).
A_CIPHERS = tuple(AEAD_NAMES)
#: Session secrets listed per case: ss[i], ss[i+1], ... (fresh: ss[0..2]; resumed: ss[i..i+1]).
FRESH_SS_COUNT = 3
RESUMED_SS_COUNT = 2
#: Traffic-key generations listed per case (the frame script rekeys once).
GENERATIONS = 2
#: The resumed case: resume the X25519 / AES-128-GCM session with ss[1].
RESUMED_FROM = (TEP.ECDHE_CURVE25519, AEADId.AES_128_GCM)
RESUME_NONCE_LEN = 8
#: How each host's session cache names its peer (any hashable; no addresses are involved).
PEER_OF = {"A": "host-b", "B": "host-a"}
#: The caches' clock: the resumption happens at the time the secrets were stored.
NOW = 0.0


def seed(name: str, label: str, length: int) -> bytes:
    """Deterministic input bytes: SHAKE-256("tcpcryptd test vector|<name>|<label>")."""
    return hashlib.shake_256(f"tcpcryptd test vector|{name}|{label}".encode()).digest(length)


def seeded_private_key(name: str, label: str, tep: int) -> bytes:
    """Raw private key for ``tep``: X25519/X448 seed bytes; P-curves a big-endian scalar with
    the top bit (P-256) / top byte (P-521) cleared, so 0 < d < group order without retries."""
    scheme = key_agreement(tep)
    if tep == TEP.ECDHE_CURVE25519 or tep == TEP.ECDHE_CURVE448:
        return seed(name, label, scheme.secret_len)
    scalar = bytearray(seed(name, label, scheme.secret_len))
    scalar[0] &= 0x7F if tep == TEP.ECDHE_P256 else 0x00
    return bytes(scalar)


# --- Frames ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One application write: ``sender`` seals ``data`` into a frame (RFC 8548 §3.6-3.8)."""

    sender: str
    data: bytes
    rekey: bool = False  # the sender initiates a rekey first (§3.8)
    fin: bool = False  # FINp: the sender's last frame (§3.7)
    urgent: bool = False  # URGp, urgent = len(data) - 1: the last data byte is urgent (§3.7)


#: The frame script of every case. A's rekey obliges B to answer at once with a rekey=1
#: frame (§3.8); that empty frame follows from ``Frame.needs_rekey_reply``, not from here.
SCRIPT = (
    Step("A", b"GET / HTTP/1.1\r\nHost: tcpcrypt.test\r\n\r\n"),
    Step("B", b"HTTP/1.1 200 OK\r\n!", urgent=True),
    Step("A", b"data under generation 1", rekey=True),
    Step("A", b"bye", fin=True),
    Step("B", b"", fin=True),
)


class Wire:
    """Two established sessions and the next frame offset of each sender's wire stream."""

    def __init__(self, sessions: dict[str, Session], first_offsets: dict[str, int]) -> None:
        self.sessions = sessions
        self.offsets = dict(first_offsets)
        self.frames: list[dict[str, Any]] = []

    def send(self, sender: str, data: bytes, *, fin: bool = False,
             urgent: int | None = None) -> None:
        """Seal one frame, open it at the peer, record it, and send a §3.8 reply if owed."""
        receiver = "B" if sender == "A" else "A"
        sealer, opener = self.sessions[sender], self.sessions[receiver]
        offset = self.offsets[sender]
        wire = sealer.seal(offset, data, fin=fin, urgent=urgent)
        received = opener.open(offset, wire)
        assert (received.data, received.fin, received.urgent) == (data, fin, urgent)
        generation = sealer.send_generation
        assert received.generation == generation
        k_ab, k_ba = sealer.traffic_keys(generation)
        traffic_key = TrafficKey(sealer.aead, k_ab if sealer.sends_with_k_ab else k_ba)
        self.frames.append({
            "sender": sender,
            "generation": generation,
            "offset": offset,
            "control": wire[0],
            "plaintext": traffic_key.open(offset, wire[3:], wire[:3]).hex(),
            "frame": wire.hex(),
        })
        self.offsets[sender] = offset + len(wire)
        if received.needs_rekey_reply:
            self.send(receiver, b"")

    def run(self, script: tuple[Step, ...]) -> list[dict[str, Any]]:
        for step in script:
            if step.rekey:
                self.sessions[step.sender].initiate_rekey()
            urgent = len(step.data) - 1 if step.urgent else None
            self.send(step.sender, step.data, fin=step.fin, urgent=urgent)
        return self.frames


def key_fields(session: Session, ss_count: int) -> dict[str, Any]:
    """ss[i..], session_id, resume[i], k_ab[j]/k_ba[j] of a session on ss[i]."""
    ss = [session.ss]
    while len(ss) < ss_count:
        ss.append(next_session_secret(ss[-1]))
    keys = [session.traffic_keys(j) for j in range(GENERATIONS)]
    return {
        "ss": [s.hex() for s in ss],
        "session_id": session.session_id.hex(),
        "resume": resumption_id(session.ss).hex(),
        "k_ab": [k_ab.hex() for k_ab, _ in keys],
        "k_ba": [k_ba.hex() for _, k_ba in keys],
    }


# --- Fresh key exchange (RFC 8547 §4, RFC 8548 §3.3) -----------------------------------------


@dataclass
class FreshSession:
    """A fresh case's vector and both hosts' sessions (the resumed case caches from them)."""

    case: dict[str, Any]
    a: Session
    b: Session


def negotiate_both(a_syn: SynOption, answer: tuple[SynOption | None, Negotiated | Fallback],
                   a_validity: TcpcryptValidity) -> tuple[Negotiated, Negotiated]:
    """B's passive-open outcome and A's outcome from B's SYN-ACK option as received."""
    b_syn, b_outcome = answer
    assert b_syn is not None and isinstance(b_outcome, Negotiated)
    a_outcome = negotiate(a_syn, parse_syn_option(b_syn.raw), is_valid=a_validity)
    assert isinstance(a_outcome, Negotiated)
    assert (a_outcome.role, b_outcome.role) == ("A", "B")
    assert a_outcome.transcript == b_outcome.transcript
    assert a_outcome.tep_byte == b_outcome.tep_byte
    return a_outcome, b_outcome


def fresh_case(tep: int, aead: int) -> FreshSession:
    name = f"{TEP_NAMES[tep]}-{AEAD_NAMES[aead]}"
    a_syn = build_syn_option(None, [Suboption(t) for t in A_OFFER])
    b_teps = [t for t in A_OFFER if t != tep] + [tep]
    a_neg, b_neg = negotiate_both(
        a_syn, passive_open(parse_syn_option(a_syn.raw), b_teps), TcpcryptValidity()
    )
    a_private = seeded_private_key(name, "a_private", tep)
    b_private = seeded_private_key(name, "b_private", tep)
    initiator = InitiatorHandshake(a_neg.tep_byte, a_neg.transcript, A_CIPHERS,
                                   private_key=a_private, n_a=seed(name, "n_a", 32))
    responder = ResponderHandshake(
        b_neg.tep_byte, b_neg.transcript, [c for c in A_CIPHERS if c != aead] + [aead],
        private_key=b_private, n_b=seed(name, "n_b", 32),
    )
    init2, session_b = responder.receive_init1(initiator.init1)
    session_a = initiator.receive_init2(init2)
    assert initiator.es == responder.es and initiator.prk == responder.prk
    assert session_a.session_id == session_b.session_id and session_a.aead.id == aead
    frames = Wire({"A": session_a, "B": session_b},
                  {"A": len(initiator.init1), "B": len(init2)}).run(SCRIPT)
    case = {
        "name": name,
        "tep": tep,
        "aead": aead,
        "a_syn_eno": a_neg.a_option.raw.hex(),
        "b_syn_eno": a_neg.b_option.raw.hex(),
        "a_private": a_private.hex(),
        "b_private": b_private.hex(),
        "init1": initiator.init1.hex(),
        "init2": init2.hex(),
        "shared_secret": initiator.es.hex(),
        "prk": initiator.prk.hex(),
        **key_fields(session_a, FRESH_SS_COUNT),
        "frames": frames,
    }
    return FreshSession(case, session_a, session_b)


# --- Resumption (RFC 8548 §3.5) --------------------------------------------------------------


def resumed_case(original: FreshSession) -> dict[str, Any]:
    """The same two hosts reconnect, A again the active opener, resuming with ss[1]."""
    tep, aead = original.case["tep"], original.case["aead"]
    caches = {"A": SessionCache(), "B": SessionCache()}
    for host, session in (("A", original.a), ("B", original.b)):
        caches[host].store_session(PEER_OF[host], session, index=0, now=NOW)
    entry_a = caches["A"].for_peer(PEER_OF["A"], NOW)
    assert entry_a is not None
    name = f"{original.case['name']}-resumed-{entry_a.index}"
    nonce_a, nonce_b = (seed(name, label, RESUME_NONCE_LEN) for label in ("nonce_a", "nonce_b"))
    a_syn = build_syn_option(None, [make_resumption_suboption(tep, entry_a.own_half, nonce_a)])
    taken: list[CacheEntry] = []

    def b_resume(offer: Suboption) -> Suboption | None:
        """Host B's cache lookup for A's identifier half (RFC 8548 §3.5)."""
        parsed = parse_resumption(offer)
        entry = None if parsed is None else caches["B"].by_peer_half(parsed[0], tep, NOW)
        if entry is None or not caches["B"].take(entry):
            return None
        taken.append(entry)
        return make_resumption_suboption(tep, entry.own_half, nonce_b)

    a_neg, b_neg = negotiate_both(
        a_syn,
        passive_open(parse_syn_option(a_syn.raw), [tep], resume=b_resume),
        TcpcryptValidity(resume_id=entry_a.resume_id),
    )
    assert a_neg.resumed and b_neg.resumed and caches["A"].take(entry_a)
    (entry_b,) = taken
    wire_nonce_a = parse_resumption(a_neg.a_suboption)
    wire_nonce_b = parse_resumption(a_neg.b_suboption)
    assert wire_nonce_a is not None and wire_nonce_b is not None
    assert (wire_nonce_a[1], wire_nonce_b[1]) == (nonce_a, nonce_b)
    session_a = entry_a.resume_session("A", local_nonce=nonce_a, peer_nonce=nonce_b)
    session_b = entry_b.resume_session("B", local_nonce=nonce_b, peer_nonce=nonce_a)
    assert session_a.session_id == session_b.session_id
    assert session_a.session_id[0] == a_neg.tep_byte
    frames = Wire({"A": session_a, "B": session_b}, {"A": 0, "B": 0}).run(SCRIPT)
    return {
        "name": name,
        "tep": tep,
        "aead": aead,
        "a_syn_eno": a_neg.a_option.raw.hex(),
        "b_syn_eno": a_neg.b_option.raw.hex(),
        "a_private": "",
        "b_private": "",
        "init1": "",
        "init2": "",
        "shared_secret": "",
        "prk": "",
        **key_fields(session_a, RESUMED_SS_COUNT),
        "frames": frames,
        "resumed_from": original.case["name"],
        "i": entry_a.index,
        "nonce_a": nonce_a.hex(),
        "nonce_b": nonce_b.hex(),
    }


def make_vectors() -> dict[str, list[dict[str, Any]]]:
    fresh = {(tep, aead): fresh_case(tep, aead) for tep in TEP_NAMES for aead in AEAD_NAMES}
    cases = [f.case for f in fresh.values()]
    cases.append(resumed_case(fresh[RESUMED_FROM]))
    return {"cases": cases}


def main() -> None:
    json.dump(make_vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
