"""The tcpcrypt key exchange that follows the ENO handshake (RFC 8548 §3.3, §3.5).

Encryption is on once both hosts sent and received an ENO ACK (RFC 8547 §4.6,
:mod:`tcpcryptd.engine.handshake`); from there to the session: host A's Init1 on its third
ACK (:func:`start_init1`, the key pair taken from the pool or generated only then), the
peer's Init message collected from the in-order wire stream (:func:`consume_init`, host B
answering with Init2, its key pair likewise),
or for a resumed session no message at all (:func:`resume`); :func:`keys_made` reports the
session, caches the next session secret for the peer and starts the first key generation.
"""

from __future__ import annotations

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.core.eno import parse_resumption
from tcpcryptd.core.messages import message_length
from tcpcryptd.core.negotiation import Role
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake
from tcpcryptd.core.tep import EphemeralKey
from tcpcryptd.engine.actions import Result
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.events import SessionEstablished
from tcpcryptd.engine.flow import Flow, State
from tcpcryptd.engine.rekey import begin_generation
from tcpcryptd.engine.timers import arm_injected, inject
from tcpcryptd.packet.tcp import FlowKey


def peer_of(key: FlowKey) -> tuple:
    """The resumption cache's name for a flow's peer: IP version, local and remote address
    (both ends of a session cache it under their own view of the pair)."""
    return key[0], key[1], key[3]


def ready_pair(ctx: Context, tep_byte: int) -> EphemeralKey | None:
    """A key pair made ahead for this connection alone (engine/keypool.py), counted as
    ``key_pairs_ready``; None: the handshake makes its own."""
    ephemeral = ctx.keys.take(tep_byte, ctx.now)
    if ephemeral is not None:
        ctx.count("key_pairs_ready")
    return ephemeral


def start_init1(ctx: Context, flow: Flow, now: float) -> bytes:
    """Host A's third ACK leaves: Init1, the first bytes of A's wire stream, is made (the
    key pair is taken from the pool, engine/keypool.py, or generated here, not before) and
    its retransmission timer armed; the caller sends it on or right before the ACK (``45 02``
    is on that ACK, RFC 8547 §4.6)."""
    flow.eno.option_for_segment(syn=False, ack=True)  # the ACK carries ``45 02``
    negotiated = flow.negotiated
    assert negotiated is not None
    handshake = InitiatorHandshake(negotiated.tep_byte, negotiated.transcript, ctx.config.aeads,
                                   ephemeral=ready_pair(ctx, negotiated.tep_byte),
                                   random=ctx.config.random)
    flow.handshake = handshake
    flow.state = State.KEYING
    init1 = handshake.init1
    flow.smap.append(0, init1, injected=True)
    arm_injected(ctx, flow, now)
    return init1


def consume_init(ctx: Context, flow: Flow, chunk: bytes | memoryview) -> tuple[bytes, bytes]:
    """Collect the peer's Init message from the in-order wire stream.

    Returns ``(init2_to_send, leftover)``: the Init2 host B must send at once (empty for A)
    and the bytes after the message (the first frames).  Until the message is whole both are
    empty.  Raises :class:`~tcpcryptd.core.errors.InitMessageError` /
    :class:`~tcpcryptd.core.errors.KeyAgreementError`, which abort the connection.
    """
    cfg = ctx.config
    flow.rx_init += chunk   # bytes: an Init message arrives in a segment or a few
    magic = INIT2_MAGIC if flow.role is Role.A else INIT1_MAGIC
    length = message_length(flow.rx_init, magic, cfg.max_init_len)
    if length is None or len(flow.rx_init) < length:
        return b"", b""
    message = bytes(flow.rx_init[:length])
    leftover = bytes(flow.rx_init[length:])
    flow.rx_init = b""
    flow.rx_init_done = True
    flow.rx_frame_offset = length
    init2 = b""
    if flow.role is Role.A:
        assert isinstance(flow.handshake, InitiatorHandshake)
        flow.session = flow.handshake.receive_init2(message, max_len=cfg.max_init_len)
    else:
        assert flow.negotiated is not None
        tep_byte = flow.negotiated.tep_byte
        responder = ResponderHandshake(tep_byte, flow.negotiated.transcript,
                                       cfg.aead_preference,
                                       ephemeral=ready_pair(ctx, tep_byte),
                                       random=cfg.random)
        init2, flow.session = responder.receive_init1(message, max_len=cfg.max_init_len)
    # The ephemeral private key, ES and PRK are not needed once the session exists: drop
    # them now rather than at the end of the connection (RFC 8548 §3.3, forward secrecy).
    flow.handshake = None
    forget_negotiation(flow)
    flow.state = State.ENCRYPTED
    return init2, leftover


def forget_negotiation(flow: Flow) -> None:
    """Drop the ENO handshake state once the session exists (memory of idle flows).

    Nothing reads the ENO endpoint or the negotiation outcome after the key exchange except
    a SYN-ACK the local stack retransmits (its ACK from the peer was lost on the local path),
    which must carry the same SYN-form option: its bytes stay in ``flow.syn_option``.  The
    TEP stays in ``flow.tep`` for status.
    """
    eno = flow.eno
    if eno is not None and eno.local_option is not None:
        flow.syn_option = eno.local_option.raw
    flow.eno = None
    flow.negotiated = None


def resume(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """Encryption is on for a connection that negotiated resumption (RFC 8548 §3.5): the
    session is made from the cached secret and both nonces (``sn[i] = nonce_a | nonce_b`` by
    original role), the secret is dropped; no Init message either way, the first frame of
    each direction at wire offset 0.  Host A calls it when its third ACK leaves, host B when
    that ACK arrives."""
    entry, flow.resume_entry = flow.resume_entry, None
    negotiated = flow.negotiated
    assert entry is not None and negotiated is not None and negotiated.resumed
    own, peer = ((negotiated.a_suboption, negotiated.b_suboption) if flow.role is Role.A
                 else (negotiated.b_suboption, negotiated.a_suboption))
    own_nonce, peer_nonce = parse_resumption(own)[1], parse_resumption(peer)[1]  # type: ignore[index]
    flow.session = entry.resume_session(flow.role, own_nonce, peer_nonce)
    flow.rx_init_done = True
    forget_negotiation(flow)
    flow.state = State.ENCRYPTED
    keys_made(ctx, flow, b"", now, result, index=entry.index)


def keys_made(ctx: Context, flow: Flow, init2: bytes, now: float, result: Result, *,
              index: int = 0) -> None:
    """The session on ``ss[index]`` exists: reported, ``ss[index+1]`` cached for the peer
    (RFC 8548 §3.5), and host B sends Init2 at once (the caller then releases the held
    local data, encrypted).

    The event's role is the one whose key this host sends with (A: ``k_ab``), which for a
    resumed session is its role in the original session, not in this connection (§3.5).
    """
    ctx.count("encrypted")
    session = flow.session
    assert session is not None
    flow.aead_name = session.aead.name
    flow.session_id = session.session_id   # shared with the session, hex in status
    resumed = flow.resumed
    if resumed:
        ctx.count("resumed")
    if ctx.sessions is not None:
        ctx.sessions.store_session(peer_of(flow.key), session, index, now)
    local, remote = flow.addresses()
    k_ab, k_ba = session.traffic_keys(0)
    result.events.append(SessionEstablished(
        local, remote, "A" if session.sends_with_k_ab else "B", flow.tep, flow.aead_name,
        session.session_id, resumed, k_ab, k_ba, now - flow.created))
    if init2:
        inject(ctx, flow, init2, now, result)
    begin_generation(ctx, flow, now)   # the rekey limits count frames only (RFC 8548 §3.8)
