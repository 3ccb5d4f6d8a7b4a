"""Handshakes and sessions (RFC 8548 §3.3, §3.4, §3.8)."""

from __future__ import annotations

import itertools

import pytest

from tcpcryptd.core.aead import TrafficKey, aead_algorithm
from tcpcryptd.core.constants import TEP, AEADId
from tcpcryptd.core.errors import (
    CipherMismatchError,
    FrameAuthError,
    FrameError,
    InitMessageError,
    KeyAgreementError,
)
from tcpcryptd.core.frame import Frame, FrameDecoder, encode_frame
from tcpcryptd.core.keys import compute_prk, cprf, next_session_secret
from tcpcryptd.core.messages import encode_init2
from tcpcryptd.core.session import (
    DEFAULT_CIPHERS,
    InitiatorHandshake,
    ResponderHandshake,
    Session,
    select_cipher,
)

ALL_TEPS = [TEP.ECDHE_P256, TEP.ECDHE_P521, TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448]
ALL_AEADS = [AEADId.AES_128_GCM, AEADId.AES_256_GCM, AEADId.CHACHA20_POLY1305]
TRANSCRIPT = b"\x45\x03\x23\x45\x04\x01\x23"


def handshake(tep: int = TEP.ECDHE_CURVE25519, aead: int = AEADId.AES_128_GCM
              ) -> tuple[InitiatorHandshake, ResponderHandshake, Session, Session, bytes]:
    a = InitiatorHandshake(tep, TRANSCRIPT, ALL_AEADS)
    b = ResponderHandshake(tep, TRANSCRIPT, (aead,))
    init2, session_b = b.receive_init1(a.init1)
    session_a = a.receive_init2(init2)
    return a, b, session_a, session_b, init2


@pytest.mark.parametrize(("tep", "aead"), list(itertools.product(ALL_TEPS, ALL_AEADS)))
def test_full_handshake(tep: int, aead: int) -> None:
    a, b, session_a, session_b, init2 = handshake(tep, aead)
    assert session_a.session_id == session_b.session_id
    assert len(session_a.session_id) == 33 and session_a.session_id[0] == tep
    assert session_a.aead.id == session_b.aead.id == aead
    assert (session_a.role, session_b.role) == ("A", "B")
    assert session_a.ss == session_b.ss == a.prk == b.prk
    assert a.es == b.es
    assert a.prk == compute_prk(a.n_a, TRANSCRIPT, a.init1, init2, a.es)
    assert session_a.traffic_keys(0) == session_b.traffic_keys(0)
    # A's first frame follows Init1 in A's wire stream; B's follows Init2
    # (README.md "Readings of the RFCs").
    to_b = session_a.seal(len(a.init1), b"hello B")
    assert session_b.open(len(a.init1), to_b).data == b"hello B"
    to_a = session_b.seal(len(init2), b"hello A", fin=True)
    frame = session_a.open(len(init2), to_a)
    assert (frame.data, frame.fin) == (b"hello A", True)


def test_directions_use_k_ab_and_k_ba() -> None:
    _, _, session_a, session_b, _ = handshake()
    k_ab, k_ba = session_a.traffic_keys(0)
    assert k_ab != k_ba
    assert session_a._key(0, True).material == k_ab
    assert session_b._key(0, True).material == k_ba
    with pytest.raises(FrameAuthError):  # A's own frame does not open under k_ba
        session_a.open(0, session_a.seal(0, b"x"))


def test_session_id_keeps_v_bit_and_transcript_matters() -> None:
    a = InitiatorHandshake(0xA3, TRANSCRIPT)
    b = ResponderHandshake(0xA3, TRANSCRIPT)
    init2, session_b = b.receive_init1(a.init1)
    assert a.receive_init2(init2).session_id[0] == 0xA3 == session_b.session_id[0]
    a2 = InitiatorHandshake(0x23, TRANSCRIPT)
    b2 = ResponderHandshake(0x23, TRANSCRIPT + b"\x00")
    init2, session_b2 = b2.receive_init1(a2.init1)
    assert a2.receive_init2(init2).session_id != session_b2.session_id


def test_fixed_keys_and_nonces_are_deterministic() -> None:
    priv_a, priv_b = bytes(range(1, 33)), bytes(range(2, 34))
    n_a, n_b = b"A" * 32, b"B" * 32
    ids = set()
    for _ in range(2):
        a = InitiatorHandshake(0x23, TRANSCRIPT, private_key=priv_a, n_a=n_a)
        b = ResponderHandshake(0x23, TRANSCRIPT, private_key=priv_b, n_b=n_b)
        assert b.ephemeral is not None and b.ephemeral.private_bytes() == priv_b
        init2, _ = b.receive_init1(a.init1)
        ids.add(a.receive_init2(init2).session_id)
    assert len(ids) == 1


def test_responder_generates_key_only_on_init1() -> None:
    b = ResponderHandshake(0x23, TRANSCRIPT)
    assert b.ephemeral is None and b.session is None
    b.receive_init1(InitiatorHandshake(0x23, TRANSCRIPT).init1)
    assert b.ephemeral is not None


def test_cipher_selection() -> None:
    assert select_cipher((1, 2, 0x10), (0x10, 2, 1)) == 1
    assert select_cipher((0x10, 0x7777), (0x10, 2, 1)) == 0x10
    with pytest.raises(InitMessageError):
        select_cipher((0x7777,), (1,))
    a = InitiatorHandshake(0x23, TRANSCRIPT, (0x0002, 0x0010))
    b = ResponderHandshake(0x23, TRANSCRIPT, (0x0002, 0x0001, 0x0010, 0x0001))
    init2, session_b = b.receive_init1(a.init1)
    assert session_b.aead.id == 0x0010 == a.receive_init2(init2).aead.id


def test_responder_no_common_cipher() -> None:
    a = InitiatorHandshake(0x23, TRANSCRIPT, (0x0002,))
    with pytest.raises(InitMessageError):
        ResponderHandshake(0x23, TRANSCRIPT, (0x0001,)).receive_init1(a.init1)


def test_cipher_mismatch() -> None:
    a = InitiatorHandshake(0x23, TRANSCRIPT, (0x0001,))
    b = ResponderHandshake(0x23, TRANSCRIPT, (0x0010,), private_key=bytes(range(32)))
    assert b.ephemeral is not None
    init2 = encode_init2(0x0010, b"B" * 32, b.ephemeral.pub)
    with pytest.raises(CipherMismatchError):
        a.receive_init2(init2)


def test_bad_public_keys_abort() -> None:
    a = InitiatorHandshake(0x23, TRANSCRIPT, (0x0001,))
    with pytest.raises(KeyAgreementError):
        a.receive_init2(encode_init2(0x0001, b"B" * 32, bytes(32)))
    bad_init1 = InitiatorHandshake(0x23, TRANSCRIPT).init1[:-32] + bytes(32)
    with pytest.raises(KeyAgreementError):
        ResponderHandshake(0x23, TRANSCRIPT).receive_init1(bad_init1)


def test_bad_messages_abort() -> None:
    a = InitiatorHandshake(0x23, TRANSCRIPT)
    with pytest.raises(InitMessageError):
        a.receive_init2(a.init1)
    with pytest.raises(InitMessageError):
        ResponderHandshake(0x23, TRANSCRIPT).receive_init1(a.init1, max_len=50)


def test_handshake_used_once() -> None:
    a, b, _, _, init2 = handshake()
    with pytest.raises(RuntimeError):
        a.receive_init2(init2)
    with pytest.raises(RuntimeError):
        b.receive_init1(a.init1)
    assert "done=True" in repr(a) and "done=True" in repr(b)


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        InitiatorHandshake(0x23, TRANSCRIPT, ())
    with pytest.raises(ValueError):
        InitiatorHandshake(0x23, TRANSCRIPT, (0x0003,))
    with pytest.raises(ValueError):
        InitiatorHandshake(0x23, TRANSCRIPT, n_a=b"short")
    with pytest.raises(ValueError):
        ResponderHandshake(0x23, TRANSCRIPT, ())
    with pytest.raises(KeyError):
        ResponderHandshake(0x2F, TRANSCRIPT)
    with pytest.raises(ValueError):
        Session("C", 0x23, aead_algorithm(1), bytes(32), b"", True)
    assert DEFAULT_CIPHERS == (1, 2, 0x10)


# --- sealing rules ----------------------------------------------------------------------


def test_seal_never_reuses_an_offset() -> None:
    _, _, session_a, _, _ = handshake()
    frame = session_a.seal(100, b"abc")
    with pytest.raises(ValueError):
        session_a.seal(100, b"abc")
    with pytest.raises(ValueError):
        session_a.seal(100 + len(frame) - 1, b"x")
    session_a.seal(100 + len(frame), b"next")


def test_nothing_after_fin() -> None:
    _, _, session_a, _, _ = handshake()
    session_a.seal(0, b"", fin=True)
    assert session_a.fin_sent and not session_a.may_initiate_empty_rekey
    with pytest.raises(RuntimeError):
        session_a.seal(100, b"late")


def test_open_empty_and_garbage() -> None:
    _, _, _, session_b, _ = handshake()
    with pytest.raises(FrameError):
        session_b.open(0, b"")
    with pytest.raises(FrameError):
        session_b.open(0, b"\x01\x00")
    assert session_b.remote_generation == 0


def test_failed_rekey_frame_does_not_advance() -> None:
    _, _, session_a, session_b, _ = handshake()
    session_a.initiate_rekey()
    frame = bytearray(session_a.seal(0, b"x"))
    frame[-1] ^= 1
    with pytest.raises(FrameAuthError):
        session_b.open(0, bytes(frame))
    assert (session_b.remote_generation, session_b.local_generation) == (0, 0)


def test_secrets_not_in_repr() -> None:
    a, b, session_a, _, _ = handshake()
    text = repr(session_a) + repr(a) + repr(b) + repr(session_a.schedule)
    for secret in (session_a.ss, *session_a.traffic_keys(0), a.n_a):
        assert secret.hex() not in text
    assert "role=A" in repr(session_a)


# --- rekeying (RFC 8548 §3.8) -----------------------------------------------------------


class Pipe:
    """Both wire streams of one connection, with offsets, for rekey scenarios."""

    def __init__(self) -> None:
        a, _, self.a, self.b, init2 = handshake(aead=AEADId.CHACHA20_POLY1305)
        self.offset = {"a": len(a.init1), "b": len(init2)}

    def send(self, sender: str, data: bytes) -> tuple[bytes, Frame]:
        src, dst = (self.a, self.b) if sender == "a" else (self.b, self.a)
        offset = self.offset[sender]
        wire = src.seal(offset, data)
        self.offset[sender] += len(wire)
        return wire, dst.open(offset, wire)


def test_rekey_to_generation_1_and_2() -> None:
    pipe = Pipe()
    assert pipe.a.may_initiate_empty_rekey
    pipe.a.initiate_rekey()
    assert pipe.a.rekey_pending and not pipe.a.may_initiate_empty_rekey
    wire, frame = pipe.send("a", b"")  # empty rekey frame: keep-alive probe (§3.9)
    assert wire[0] & 1 and frame.rekey and frame.generation == 1
    assert frame.needs_rekey_reply
    assert (pipe.b.local_generation, pipe.b.remote_generation) == (1, 1)
    assert pipe.b.rekey_pending
    wire, frame = pipe.send("b", b"")  # B's obligatory reply
    assert wire[0] & 1 and not frame.needs_rekey_reply
    assert (pipe.a.local_generation, pipe.a.remote_generation) == (1, 1)
    wire, frame = pipe.send("a", b"gen1 data")
    assert wire[0] == 0 and frame.generation == 1
    # Generation 2, this time started by B with data.
    pipe.b.initiate_rekey()
    _, frame = pipe.send("b", b"gen2 data")
    assert frame.generation == 2 and frame.needs_rekey_reply
    _, frame = pipe.send("a", b"reply")
    assert frame.generation == 2 and not frame.needs_rekey_reply
    assert pipe.a.traffic_keys(2) == pipe.b.traffic_keys(2)
    for session in (pipe.a, pipe.b):
        assert (session.local_generation, session.remote_generation) == (2, 2)


def test_simultaneous_rekey_needs_no_reply() -> None:
    pipe = Pipe()
    pipe.a.initiate_rekey()
    pipe.b.initiate_rekey()
    _, frame_at_b = pipe.send("a", b"x")
    _, frame_at_a = pipe.send("b", b"y")
    assert not frame_at_b.needs_rekey_reply and not frame_at_a.needs_rekey_reply
    assert pipe.a.local_generation == pipe.b.local_generation == 1


def test_two_generations_are_announced_frame_by_frame() -> None:
    """B sees two rekeys before it sends: it steps 0 -> 1 -> 2, one rekey=1 frame each."""
    pipe = Pipe()
    pipe.a.initiate_rekey()
    pipe.send("a", b"1")
    pipe.a.initiate_rekey()
    _, frame = pipe.send("a", b"2")
    assert frame.generation == 2 and pipe.b.local_generation == 2
    first, frame = pipe.send("b", b"r1")
    assert first[0] & 1 and frame.generation == 1
    assert pipe.b.rekey_pending
    second, frame = pipe.send("b", b"r2")
    assert second[0] & 1 and frame.generation == 2
    assert not pipe.b.rekey_pending and pipe.b.send_generation == 2


def test_no_reply_obligation_after_fin() -> None:
    pipe = Pipe()
    pipe.b.seal(pipe.offset["b"], b"bye", fin=True)
    pipe.a.initiate_rekey()
    _, frame = pipe.send("a", b"")
    assert not frame.needs_rekey_reply


def test_decoder_follows_generations() -> None:
    pipe = Pipe()
    start = pipe.offset["a"]
    wire = pipe.a.seal(start, b"g0")
    pipe.a.initiate_rekey()
    wire += pipe.a.seal(start + len(wire), b"g1")
    wire += pipe.a.seal(start + len(wire), b"g1 again")
    frames = FrameDecoder(pipe.b, start).feed(wire)
    assert [(f.data, f.generation, f.rekey) for f in frames] == [
        (b"g0", 0, False), (b"g1", 1, True), (b"g1 again", 1, False)]


def test_discard_old_generations() -> None:
    pipe = Pipe()
    pipe.send("a", b"generation 0")
    pipe.send("b", b"generation 0")
    pipe.a.initiate_rekey()
    pipe.send("a", b"")
    pipe.send("b", b"")
    old = pipe.a.traffic_keys(0)
    assert 0 in pipe.a._send_keys and 0 in pipe.a._recv_keys
    pipe.a.discard_generations_below(1)
    with pytest.raises(KeyError):
        pipe.a.traffic_keys(0)
    assert 0 not in pipe.a._send_keys and 0 not in pipe.a._recv_keys
    assert pipe.b.traffic_keys(0) == old
    pipe.send("a", b"still fine")
    pipe.send("b", b"both ways")
    pipe.b.discard_generations_below(5)  # clamps to the generations in use
    pipe.send("b", b"ok")
    pipe.send("a", b"ok")


def test_released_aead_objects_are_rebuilt_in_every_generation() -> None:
    """release_aead keeps the raw keys only; seal/open rebuild, rekeying included."""
    pipe = Pipe()
    pipe.send("a", b"generation 0")
    pipe.send("b", b"generation 0")
    for session in (pipe.a, pipe.b):
        assert session.aead_built
        session.release_aead()
        assert not session.aead_built
    _, frame = pipe.send("a", b"after release")
    assert frame.data == b"after release" and frame.generation == 0
    assert pipe.a.aead_built and pipe.b.aead_built
    # a rekey started while released: generation 1 made, generation 0 not rebuilt
    pipe.a.release_aead()
    pipe.b.release_aead()
    pipe.a.initiate_rekey()
    _, frame = pipe.send("a", b"gen1")
    assert frame.generation == 1 and frame.needs_rekey_reply
    assert set(pipe.a._send_keys) == {1} and set(pipe.b._recv_keys) == {1}
    pipe.b.release_aead()   # between the peer's rekey and the obligatory answer
    _, frame = pipe.send("b", b"gen1 reply")
    assert frame.generation == 1 and not frame.needs_rekey_reply
    # a rebuilt key seals exactly what a key never released does (same key, same nonce)
    pipe.a.release_aead()
    offset = pipe.offset["a"]
    wire, frame = pipe.send("a", b"same bytes")
    k_ab, _ = pipe.a.traffic_keys(1)
    assert wire == encode_frame(TrafficKey(pipe.a.aead, k_ab), offset, b"same bytes")
    # a rebuilt receive key still rejects a forged frame
    pipe.b.release_aead()
    offset = pipe.offset["a"]
    forged = bytearray(pipe.a.seal(offset, b"tamper me"))
    forged[-1] ^= 1
    with pytest.raises(FrameAuthError):
        pipe.b.open(offset, bytes(forged))
    # discarded generations stay discarded after a release
    pipe.a.discard_generations_below(1)
    pipe.a.release_aead()
    with pytest.raises(KeyError):
        pipe.a.traffic_keys(0)


# --- resumption keys (RFC 8548 §3.5) ----------------------------------------------------


def test_resumption_secret() -> None:
    _, _, session_a, session_b, _ = handshake()
    ss1, resume1 = session_a.resumption_secret()
    assert (ss1, resume1) == session_b.resumption_secret()
    assert ss1 == next_session_secret(session_a.ss)
    assert resume1 == cprf(ss1, b"\x06", 18)


@pytest.mark.parametrize(("orig_a_role_now", "orig_b_role_now"), [("A", "B"), ("B", "A")])
def test_resumed_session_keeps_original_direction(orig_a_role_now: str,
                                                  orig_b_role_now: str) -> None:
    _, _, session_a, session_b, _ = handshake(aead=AEADId.AES_256_GCM)
    ss1, _ = session_a.resumption_secret()
    nonce_orig_a, nonce_orig_b = b"\x01" * 8, b"\x02" * 3
    was_a = Session.resume(orig_a_role_now, 0x23, session_a.aead, ss1, sends_with_k_ab=True,
                           local_nonce=nonce_orig_a, peer_nonce=nonce_orig_b)
    was_b = Session.resume(orig_b_role_now, 0x23, session_b.aead, ss1, sends_with_k_ab=False,
                           local_nonce=nonce_orig_b, peer_nonce=nonce_orig_a)
    assert was_a.sn == was_b.sn == nonce_orig_a + nonce_orig_b
    assert was_a.session_id == was_b.session_id
    assert was_a.session_id[0] == 0xA3
    assert was_a.session_id != session_a.session_id
    k_ab, k_ba = was_a.traffic_keys(0)
    assert was_a._key(0, True).material == k_ab and was_b._key(0, True).material == k_ba
    assert was_b.open(0, was_a.seal(0, b"resumed")).data == b"resumed"
    assert was_a.open(0, was_b.seal(0, b"back")).data == b"back"


def test_resume_nonce_too_long() -> None:
    with pytest.raises(ValueError):
        Session.resume("A", 0x23, aead_algorithm(1), bytes(32), sends_with_k_ab=True,
                       local_nonce=bytes(9), peer_nonce=b"")
