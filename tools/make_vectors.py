#!/usr/bin/env python3
"""Generate the tcpcrypt test vectors.

    .venv/bin/python tools/make_vectors.py > tests/vectors/tcpcrypt.json     (make vectors)

RFC 8547 and RFC 8548 publish no test vectors. The file has three lists, made two ways so that
two readings of the RFCs meet in every list (schema: tests/vectors/README.md):

* ``cases`` -- complete sessions made by driving :mod:`tcpcryptd.core` exactly as two hosts
  would: host A's SYN option, host B's answer (``passive_open``), ``negotiate`` on A,
  ``InitiatorHandshake``/``ResponderHandshake`` for Init1/Init2, then ``Session.seal`` on one
  side and ``Session.open`` on the other for every frame, with fixed private keys and nonces
  derived from the case name. They record what our implementation puts on the wire;
  tests/core/test_vectors.py proves every value independently of the core.
* ``rekeying`` and ``resumption`` -- key generations j = 0..3 with frames crossing three
  rekeys (RFC 8548 §3.8), and chains of resumed sessions (§3.5), computed here *without* the
  core, from the RFC's formulas with `cryptography` primitives and byte layouts written out
  again (section "Independent derivations" below). tests/core/test_vectors_resume_rekey.py
  checks the core against them.

tests/core/test_vectors.py also requires this script's output to equal the committed file
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

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


# --- Independent derivations: rekeyed generations and resumed sessions -----------------------
#
# Nothing below calls tcpcryptd: the key schedule (RFC 8548 §3.3-3.5), the §3.8 generation
# rules, frames (§4.2) and the resumption suboptions (§3.5; RFC 8547 §4.1-4.4) are written
# out again from the RFC texts, so that tests/core/test_vectors_resume_rekey.py checks the
# core against a second reading.

# RFC 8548 §4.3, Table 1, and §5 (K_LEN of every TEP).
CONST_NEXTK, CONST_SESSID, CONST_REKEY = b"\x01", b"\x02", b"\x03"
CONST_KEY_A, CONST_KEY_B, CONST_RESUME = b"\x04", b"\x05", b"\x06"
K_LEN = 32
#: resume[i] and the half of it one suboption carries (§3.5, Figures 2 and 3).
RESUME_LEN, RESUME_HALF = 18, 9
#: sym_cipher -> (AEAD, ae_key_len); ae_nonce_len is 12 and the tag 16 bytes for all (§6).
RFC_AEADS = {0x0001: (AESGCM, 16), 0x0002: (AESGCM, 32), 0x0010: (ChaCha20Poly1305, 32)}
AE_NONCE_LEN, AE_TAG_LEN = 12, 16
#: TCP-ENO: option kind 69; v bit of a suboption byte; global suboption with b = 1 (RFC 8547).
ENO_OPTION_KIND, V_BIT, GLOBAL_B1 = 0x45, 0x80, 0x01
#: control bit 0 (§4.2) and flags bit 0 (§4.2.1).
REKEY_BIT, FINP_FLAG = 0x01, 0x01
#: Key generations j = 0 .. LISTED_GENERATIONS - 1 listed per case.
LISTED_GENERATIONS = 4
#: Where the rekeying cases pick up each host's wire stream: frame IDs then use the high
#: bytes of the 8-byte offset (A's frames cross 2^32; B's sit above 2^56).
REKEYING_FIRST_OFFSETS = {"A": (1 << 32) - 64, "B": (1 << 56) + 11}
#: Resumed sessions: i, the original role of the active opener, nonce_a / nonce_b lengths
#: (0..8 bytes, §3.5), and whether the opener's SYN also offers the other TEPs fresh.
RESUMPTIONS = ((1, "A", 8, 8, False), (2, "B", 5, 0, True))


def rfc_cprf(key: bytes, const: bytes, length: int) -> bytes:
    """CPRF(K, CONST, L) = HKDF-Expand-SHA256(PRK = K, info = CONST, L) (RFC 8548 §5)."""
    return HKDFExpand(SHA256(), length, const).derive(key)


def rfc_key_sets(ss: bytes, sn: bytes, aead: int) -> dict[str, list[str]]:
    """mk[j], k_ab[j], k_ba[j] for j = 0..3 from ss[i] and sn[i] (RFC 8548 §3.3, §3.8)."""
    traffic_key_len = RFC_AEADS[aead][1] + AE_NONCE_LEN
    mk = [rfc_cprf(ss, CONST_REKEY + sn, K_LEN)]
    while len(mk) < LISTED_GENERATIONS:
        mk.append(rfc_cprf(mk[-1], CONST_REKEY, K_LEN))
    return {
        "mk": [m.hex() for m in mk],
        "k_ab": [rfc_cprf(m, CONST_KEY_A, traffic_key_len).hex() for m in mk],
        "k_ba": [rfc_cprf(m, CONST_KEY_B, traffic_key_len).hex() for m in mk],
    }


def rfc_session_id(tep_byte: int, ss: bytes, sn: bytes) -> bytes:
    """TEP-byte (as host B sent it, v bit included) | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)."""
    return bytes([tep_byte]) + rfc_cprf(ss, CONST_SESSID + sn, K_LEN)


def rfc_aead_and_nonce(aead: int, traffic_key: bytes, offset: int) -> tuple[Any, bytes]:
    """The AEAD of K and the nonce N = frame_ID XOR NR of the frame at ``offset``.

    Traffic key = K | NR (§3.6); frame_ID = zero bytes | offset, 8 bytes big-endian (§4.2.3).
    """
    cls, key_len = RFC_AEADS[aead]
    frame_id = bytes(AE_NONCE_LEN - 8) + struct.pack(">Q", offset)
    nonce = bytes(f ^ r for f, r in zip(frame_id, traffic_key[key_len:], strict=True))
    return cls(traffic_key[:key_len]), nonce


def rfc_seal(aead: int, traffic_key: bytes, offset: int, control: int,
             plaintext: bytes) -> bytes:
    """control | clen | AEAD(K, N, plaintext, AD = control | clen) (§4.2, §4.2.2)."""
    cipher, nonce = rfc_aead_and_nonce(aead, traffic_key, offset)
    header = struct.pack(">BH", control, len(plaintext) + AE_TAG_LEN)
    return header + cipher.encrypt(nonce, plaintext, header)


class RfcHost:
    """One end's rekeying state (RFC 8548 §3.8): local and remote generation numbers.

    ``role`` is the host's role in the session of ss[0]: "A" encrypts with k_ab[j] and
    decrypts with k_ba[j], also in every resumed session (§3.3, §3.5).
    """

    def __init__(self, role: str, keys: dict[str, list[str]], first_offset: int) -> None:
        self.role = role
        own, peer = ("k_ab", "k_ba") if role == "A" else ("k_ba", "k_ab")
        self.send_keys = [bytes.fromhex(k) for k in keys[own]]
        self.receive_keys = [bytes.fromhex(k) for k in keys[peer]]
        self.local = self.remote = 0
        self.last_sent_generation = 0
        self.fin_sent = False
        self.offset = first_offset

    def seal(self, aead: int, data: bytes, *, initiates_rekey: bool,
             fin: bool) -> dict[str, Any]:
        """The next frame: rekey = 1 iff it is the first under a newly incremented local
        generation ("initiating rekeying" increments it beyond the remote one)."""
        if initiates_rekey:
            assert self.local == self.remote, "at most one rekey in flight per host here"
            self.local += 1
        rekey = self.local != self.last_sent_generation
        assert self.local <= self.last_sent_generation + 1
        plaintext = bytes([FINP_FLAG if fin else 0]) + data
        control = REKEY_BIT if rekey else 0
        wire = rfc_seal(aead, self.send_keys[self.local], self.offset, control, plaintext)
        frame = {
            "sender": self.role,
            "generation": self.local,
            "offset": self.offset,
            "control": control,
            "plaintext": plaintext.hex(),
            "frame": wire.hex(),
            "initiates_rekey": initiates_rekey,
            "obliges_reply": False,
            "in_flight_with_next": False,
        }
        self.last_sent_generation = self.local
        self.offset += len(wire)
        self.fin_sent = fin
        return frame

    def receive(self, aead: int, frame: dict[str, Any]) -> bool:
        """Open a frame of the peer; True when §3.8 obliges this host to answer at once with
        a rekey = 1 frame (the remote generation passed the local one, and no FIN sent)."""
        wire = bytes.fromhex(frame["frame"])
        generation = self.remote + 1 if wire[0] & REKEY_BIT else self.remote
        assert generation == frame["generation"]
        cipher, nonce = rfc_aead_and_nonce(aead, self.receive_keys[generation], frame["offset"])
        assert cipher.decrypt(nonce, wire[3:], wire[:3]).hex() == frame["plaintext"]
        self.remote = generation
        if self.remote > self.local:
            self.local = self.remote
            return not self.fin_sent
        return False


class RfcWire:
    """Two :class:`RfcHost` ends exchanging frames; each frame is received as soon as it is
    sent unless sent :meth:`crossing` with the peer's, and an owed §3.8 reply follows at once
    (an empty frame)."""

    def __init__(self, aead: int, keys: dict[str, list[str]], offsets: dict[str, int]) -> None:
        self.aead = aead
        self.hosts = {role: RfcHost(role, keys, offsets[role]) for role in ("A", "B")}
        self.frames: list[dict[str, Any]] = []

    def _seal(self, sender: str, data: bytes, initiates_rekey: bool,
              fin: bool) -> dict[str, Any]:
        frame = self.hosts[sender].seal(self.aead, data, initiates_rekey=initiates_rekey, fin=fin)
        self.frames.append(frame)
        return frame

    def _deliver(self, frame: dict[str, Any]) -> None:
        receiver = "B" if frame["sender"] == "A" else "A"
        frame["obliges_reply"] = self.hosts[receiver].receive(self.aead, frame)
        if frame["obliges_reply"]:
            self.send(receiver, b"")

    def send(self, sender: str, data: bytes, *, initiates_rekey: bool = False,
             fin: bool = False) -> None:
        self._deliver(self._seal(sender, data, initiates_rekey, fin))

    def crossing(self, data_a: bytes, data_b: bytes) -> None:
        """Both hosts initiate a rekey and send a frame before either receives the other's:
        each then finds the remote generation equal to its local one and owes no reply."""
        first = self._seal("A", data_a, True, False)
        first["in_flight_with_next"] = True
        second = self._seal("B", data_b, True, False)
        self._deliver(first)
        self._deliver(second)


def rekeying_case(tep: int, aead: int) -> dict[str, Any]:
    """Generations 0..3 of a fresh session (sn[0] empty) and frames under each (§3.3, §3.8)."""
    name = f"{TEP_NAMES[tep]}-{AEAD_NAMES[aead]}-rekeying"
    ss = seed(name, "ss", K_LEN)
    keys = rfc_key_sets(ss, b"", aead)
    wire = RfcWire(aead, keys, REKEYING_FIRST_OFFSETS)
    wire.send("A", b"generation 0 from A")
    wire.send("A", b"A starts generation 1", initiates_rekey=True)  # B's empty reply follows
    wire.send("B", b"generation 1 from B")
    wire.crossing(b"A starts generation 2", b"B starts generation 2")
    wire.send("A", b"A's last frame", fin=True)
    wire.send("B", b"B starts generation 3", initiates_rekey=True)  # A sent FINp: no reply
    wire.send("B", b"", fin=True)
    return {
        "name": name,
        "tep": tep,
        "aead": aead,
        "ss": ss.hex(),
        "session_id": rfc_session_id(tep, ss, b"").hex(),
        **keys,
        "frames": wire.frames,
    }


def eno_syn_option(global_suboption: int | None, fresh_teps: tuple[int, ...],
                   resumption_tep: int, data: bytes) -> bytes:
    """kind | length | [global] | fresh TEP bytes (v = 0) | TEP byte with v = 1 | data.

    The resumption suboption comes last, without a length byte: its data then runs to the
    end of the option (RFC 8547 §4.1, §4.4).
    """
    contents = bytes([] if global_suboption is None else [global_suboption])
    contents += bytes(fresh_teps) + bytes([resumption_tep | V_BIT]) + data
    option = bytes([ENO_OPTION_KIND, 2 + len(contents)]) + contents
    assert len(option) <= 40, "TCP option space"
    return option


def resumption_cases(tep: int, aead: int) -> list[dict[str, Any]]:
    """The sessions resumed from one fresh session's ss[0]: ss[1], then ss[2] (§3.5)."""
    pair = f"{TEP_NAMES[tep]}-{AEAD_NAMES[aead]}-resumption"
    ss_previous = seed(pair, "ss0", K_LEN)
    cases = []
    for i, opener, nonce_a_len, nonce_b_len, offers_fresh in RESUMPTIONS:
        name = f"{pair}-{i}"
        ss = rfc_cprf(ss_previous, CONST_NEXTK, K_LEN)
        resume = rfc_cprf(ss, CONST_RESUME, RESUME_LEN)
        nonces = {"A": seed(name, "nonce_a", nonce_a_len), "B": seed(name, "nonce_b", nonce_b_len)}
        # The host that was A with ss[0] names the session with resume[i]{0..8}, the one that
        # was B with resume[i]{9..17}, whichever opens this connection (Figures 2 and 3).
        halves = {"A": resume[:RESUME_HALF], "B": resume[RESUME_HALF:]}
        passive = "B" if opener == "A" else "A"
        fresh_teps = tuple(t for t in TEP_NAMES if t != tep) if offers_fresh else ()
        sn = nonces["A"] + nonces["B"]
        keys = rfc_key_sets(ss, sn, aead)
        wire = RfcWire(aead, keys, {"A": 0, "B": 0})  # no Init messages: both streams at 0
        wire.send(opener, b"first frame of the active opener")
        wire.send(passive, b"first frame of the passive opener")
        wire.send(passive, b"the passive opener starts generation 1", initiates_rekey=True)
        cases.append({
            "name": name,
            "tep": tep,
            "aead": aead,
            "i": i,
            "ss_previous": ss_previous.hex(),
            "ss": ss.hex(),
            "ss_next": rfc_cprf(ss, CONST_NEXTK, K_LEN).hex(),
            "resume": resume.hex(),
            "opener": opener,
            "nonce_a": nonces["A"].hex(),
            "nonce_b": nonces["B"].hex(),
            "syn_eno": eno_syn_option(None, fresh_teps, tep, halves[opener] + nonces[opener]).hex(),
            "syn_ack_eno": eno_syn_option(GLOBAL_B1, (), tep,
                                          halves[passive] + nonces[passive]).hex(),
            "sn": sn.hex(),
            # Host B of this connection sends the TEP byte with v = 1 (§3.4, §3.5).
            "session_id": rfc_session_id(tep | V_BIT, ss, sn).hex(),
            **keys,
            "frames": wire.frames,
        })
        ss_previous = ss
    return cases


def make_vectors() -> dict[str, list[dict[str, Any]]]:
    pairs = [(tep, aead) for tep in TEP_NAMES for aead in AEAD_NAMES]
    rekeying = [rekeying_case(tep, aead) for tep, aead in pairs]
    resumption = [case for tep, aead in pairs for case in resumption_cases(tep, aead)]
    fresh = {(tep, aead): fresh_case(tep, aead) for tep, aead in pairs}
    cases = [f.case for f in fresh.values()]
    cases.append(resumed_case(fresh[RESUMED_FROM]))
    # The independent lists come first: the core-made cases keep their lines unchanged.
    return {"rekeying": rekeying, "resumption": resumption, "cases": cases}


def main() -> None:
    json.dump(make_vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
