"""Per-flow state of the transparent tcpcrypt endpoint, and the packets it builds itself.

A :class:`Flow` is one TCP connection of the local stack, keyed by the 4-tuple as the local
stack sends it.  It holds the ENO handshake endpoint, the tcpcrypt handshake or session, the
outbound :class:`~tcpcryptd.engine.sendmap.SendMap`, the inbound
:class:`~tcpcryptd.engine.reassembly.Reassembly`, the plaintext waiting for the local stack,
retransmission timers of injected bytes, and counters for ``tcpcryptd status``.

Sequence spaces (docs/ARCHITECTURE.md "Sequence spaces"): both streams of a direction share
its ISN; every offset is ``seq - (ISN + 1)`` as an unbounded int (:func:`unwrap` handles the 32-bit wrap).

Packets the engine makes look like the local stack's (docs/ARCHITECTURE.md "Packets the
engine builds"): toward the wire they
carry the stack's latest TSval and echo the peer's latest, its window (scaled by the stack's
own shift), TTL/hop limit, DF and traffic class; toward the stack they mirror the peer's.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter

from tcpcryptd.core.constants import NON_SYN_OPTION, TEP
from tcpcryptd.core.negotiation import ENOEndpoint, Negotiated, Role
from tcpcryptd.core.resumption import CacheEntry
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake, Session
from tcpcryptd.engine.actions import Direction, Transmit
from tcpcryptd.engine.reassembly import Reassembly
from tcpcryptd.engine.sendmap import SendMap
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, FlowKey, TCPPacket, build

MASK32 = 0xFFFFFFFF
#: Flags that leave the engine's fast paths (both directions) to the full ones.
NOT_FAST = SYN | FIN | RST | URG
_HALF32 = 1 << 31

#: MSS assumed when a SYN carries none (RFC 9293 §3.7.1)
DEFAULT_MSS = {4: 536, 6: 1220}
#: Frame overhead plus the padded ``45 02`` option the local stack does not know about:
#: the MSS clamp on ENO flows (docs/ARCHITECTURE.md "Packets the engine builds").
MSS_CLAMP = 20 + 4


class FlowAbort(Exception):
    """A condition that aborts the connection (RST both ways), with the reason counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ts_newer(a: int, b: int) -> bool:
    """RFC 7323 §5.3 comparison of 32-bit timestamps: ``a`` later than ``b``."""
    return 0 < ((a - b) & MASK32) < _HALF32


def unwrap(seq: int, isn: int, ref: int) -> int:
    """Offset ``seq - (isn + 1)`` as the unbounded int nearest to ``ref`` (32-bit wrap)."""
    delta = (seq - isn - 1 - ref) & MASK32
    if delta >= _HALF32:
        delta -= 1 << 32
    return ref + delta


class State(StrEnum):
    """Life of an ENO flow."""

    SYN_SENT = "syn-sent"          #: A: our SYN carries ENO
    SYN_RECEIVED = "syn-received"  #: B: the peer's SYN carried ENO, we answer in the SYN-ACK
    NEGOTIATED = "negotiated"      #: A: the SYN-ACK agreed a TEP; third ACK not yet sent
    KEYING = "keying"              #: encryption on (RFC 8547 §4.6), Init1/Init2 under way
    ENCRYPTED = "encrypted"        #: session keys exist
    CLOSED = "closed"              #: both FINs or a RST seen: lingering
    ABORTED = "aborted"            #: RST sent to both sides: lingering
    TOMBSTONE = "tombstone"        #: linger over: state freed, every segment dropped


#: Before the session's key exchange starts: ENO may still fall back (RFC 8547 §4.6)
HANDSHAKE_STATES = (State.SYN_SENT, State.SYN_RECEIVED, State.NEGOTIATED)


@dataclass(frozen=True)
class FlowStatus:
    """One line of ``tcpcryptd status``."""

    local: str
    remote: str
    state: str
    role: str
    tep: str
    aead: str
    session_id: str
    age: float
    packets_out: int
    packets_in: int
    bytes_out_plain: int
    bytes_out_wire: int
    bytes_in_wire: int
    bytes_in_plain: int
    abort_reason: str
    #: the session was resumed from a cached secret (RFC 8548 §3.5)
    resumed: bool = False
    #: key generations (RFC 8548 §3.8): the latest one this host sent under / the peer's
    generation_out: int = 0
    generation_in: int = 0


def _address(version: int, addr: bytes, port: int) -> str:
    """``10.0.0.1:80`` or ``[fd00::1]:80``, the address in its canonical (RFC 5952) text."""
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"


def flow_addresses(key: FlowKey) -> tuple[str, str]:
    """``(local, remote)`` of a flow key (the 4-tuple as the local stack sends it)."""
    version, src, sport, dst, dport = key
    return _address(version, src, sport), _address(version, dst, dport)


#: Largest request CPython's small-object allocator (pymalloc) serves from its own pools;
#: anything larger is a C ``malloc`` chunk.  A :class:`Flow` (GC header included) stays
#: within it: flows that live for hours would otherwise sit in the C heap between the
#: short-lived chunks of OpenSSL cipher contexts (built, then released after
#: ``EngineConfig.aead_idle_release``) and keep their pages resident.
SMALL_OBJECT_LIMIT = 512


class ColdState:
    """The part of a :class:`Flow` that no per-packet path reads: SYN-phase state (RFC 8547
    §4.6, RFC 7323 option negotiation), the RTT estimate of injected bytes (RFC 6298), the
    numbers of an ended flow, and what only status or the key log shows.  Each attribute
    is read and written as the :class:`Flow` attribute of the same name."""

    __slots__ = (
        "role", "eno", "negotiated", "handshake", "resume_entry", "syn_option",
        "tep", "created", "aead_name", "session_id", "abort_reason", "local_mss",
        "local_wscale_sent", "peer_wscale_sent", "local_sack", "peer_sack", "local_ts",
        "peer_ts", "rx_init", "srtt", "rttvar", "rto", "rtx_count", "syn_time", "syn_sends",
        "syn_rtt", "final_local_ack", "final_wire_ack", "final_wire_seq", "challenge_at",
    )

    def __init__(self, version: int, role: Role, eno: ENOEndpoint, now: float) -> None:
        self.role = role
        #: ENO handshake state; None once the session exists (see :class:`Flow`)
        self.eno: ENOEndpoint | None = eno
        self.negotiated: Negotiated | None = None
        self.handshake: InitiatorHandshake | ResponderHandshake | None = None
        #: the cached secret this connection resumes (offered by A, found by B) until the
        #: session is made from it, then None: a secret secures one connection (RFC 8548 §3.5)
        self.resume_entry: CacheEntry | None = None
        #: our SYN-form ENO option bytes, kept when ``eno`` is dropped
        self.syn_option = b""
        #: the negotiated TEP (v bit stripped), 0 until negotiated
        self.tep = 0
        self.created = now
        self.aead_name = ""     # kept for status after the keys are wiped
        self.session_id = b""   # kept for status after the keys are wiped
        self.abort_reason = ""
        #: the segment size the local stack takes
        self.local_mss = DEFAULT_MSS[version]
        # the options each SYN carried (RFC 7323 §2.2, RFC 2018 §2): ``Flow.sack_ok``,
        # ``Flow.ts_ok`` and the window shifts are derived from them
        self.local_wscale_sent = self.peer_wscale_sent = False
        self.local_sack = self.peer_sack = False
        self.local_ts = self.peer_ts = False
        self.rx_init = b""                  # Init message bytes collected so far
        # RTT estimate and backoff of injected bytes (RFC 6298)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = 1.0
        self.rtx_count = 0
        #: our SYN (A) or SYN-ACK (B): when first sent, and how often; the SYN's RTT is a
        #: sample only if it was sent once (Karn's algorithm, RFC 6298 §3)
        self.syn_time = now
        self.syn_sends = 1 if role is Role.A else 0
        self.syn_rtt: float | None = None
        #: the peer's last ACK in local space, kept when the send map is freed (tombstone)
        self.final_local_ack: int | None = None
        #: our last wire ACK and sequence number, kept for the tombstone's answers
        self.final_wire_ack: int | None = None
        self.final_wire_seq = 0
        #: when the engine last sent a challenge ACK (RFC 5961 §7 rate limit), or None
        self.challenge_at: float | None = None


class Flow:
    """State of one ENO connection (plain connections have no Flow).

    Memory (docs/ARCHITECTURE.md "Memory"; ``python -m bench.flow_memory``): ``__slots__``, no
    per-instance dict, so no attribute can be added outside ``__init__``.  The instance
    stays within :data:`SMALL_OBJECT_LIMIT` (CPython's small-object allocator): what no
    per-packet path reads lives in the :class:`ColdState` record ``cold``, reached through
    properties of the same names (``flow.eno``, ``flow.srtt``, ...).  Handshake-only state
    is dropped once the session exists (:func:`~tcpcryptd.engine.handshake.
    consume_init`): the ENO endpoint and the negotiation outcome go, only the TEP (for
    status) and our SYN-form option bytes (B's SYN-ACK retransmissions repeat them, RFC 8547
    §4.6) stay.
    """

    __slots__ = (
        "key", "cold", "state", "last_activity", "session", "aead_idle_at", "local_isn",
        "peer_isn", "peer_mss", "local_wscale", "peer_wscale", "sack_ok", "ts_ok", "send_eno",
        "smap", "local_fin", "rx", "rx_init_done", "rx_partial", "rx_frame_offset", "rx_finp",
        "rx_fin_wire", "rx_fin_done", "rx_urgent", "rx_push", "dl_buf", "dl_base", "dl_sent",
        "dl_fin_sent", "stack_rcv_ack", "stack_window", "dl_deadline", "dl_backoff",
        "stack_dupacks", "stack_seen_ack", "stack_seen_window", "stack_tsval", "peer_tsval",
        "out_ttl", "out_df", "out_tos", "in_ttl", "in_df", "in_tos", "peer_window_field",
        "rtx_deadline", "rtt_probe", "held", "closed_at", "scheduled", "stale", "packets_out",
        "packets_in", "bytes_out_plain", "bytes_out_wire", "bytes_in_wire", "bytes_in_plain",
        "rekey_wire", "rekey_time",
    )

    def __init__(self, key: FlowKey, role: Role, eno: ENOEndpoint, now: float) -> None:
        self.key = key
        #: the attributes no per-packet path touches (:class:`ColdState`)
        self.cold = ColdState(key[0], role, eno, now)
        self.state = State.SYN_SENT if role is Role.A else State.SYN_RECEIVED
        self.last_activity = now
        self.session: Session | None = None
        #: when the session's AEAD objects are released if the flow stays idle
        #: (``EngineConfig.aead_idle_release``); None: nothing to release or not armed
        self.aead_idle_at: float | None = None
        # ISNs: local = the local stack's (outbound stream), peer = the remote's
        self.local_isn = 0
        self.peer_isn = 0
        #: the segment size the peer takes (unclamped)
        self.peer_mss = DEFAULT_MSS[key[0]]
        self.local_wscale = 0   # shift of the window fields the local stack sends
        self.peer_wscale = 0    # shift of the window fields the peer sends
        self.sack_ok = False    # both SYNs carried SACK-permitted
        self.ts_ok = False      # both SYNs carried timestamps
        #: add ``45 02`` to what we send until a non-SYN segment arrives (RFC 8547 §4.6)
        self.send_eno = True
        # outbound: local stack -> wire
        self.smap = SendMap()
        self.local_fin = False
        # inbound: wire -> local stack
        self.rx = Reassembly()
        self.rx_init_done = False           # the peer's Init message is whole
        self.rx_partial: bytes | bytearray = b""   # start of a frame not yet whole
        self.rx_frame_offset = 0            # wire offset of the next frame
        self.rx_finp = False                # FINp frame verified
        #: the peer's latest data segment carried PSH: the plaintext it completed is passed
        #: on with PSH, and only then (a PSH on every segment makes Linux ACK each one)
        self.rx_push = False
        self.rx_fin_wire: int | None = None  # wire offset of the peer's TCP FIN
        self.rx_fin_done = False            # FIN consumed (one wire and one local number)
        self.rx_urgent: int | None = None   # local index of the last urgent byte
        # plaintext for the local stack: local offsets [dl_base, dl_base + len(dl_buf))
        self.dl_buf = bytearray()
        self.dl_base = 0
        self.dl_sent = 0                    # next local offset never sent to the stack
        self.dl_fin_sent = False            # the peer's FIN was passed to the stack
        self.stack_rcv_ack = 0              # the stack's ACK of our deliveries (local)
        self.stack_window = 65535           # bytes the stack can take beyond stack_rcv_ack
        self.dl_deadline: float | None = None
        self.dl_backoff = 0
        self.stack_dupacks = 0              # duplicate ACKs from the stack below dl_sent
        # what the local stack has seen from the peer
        self.stack_seen_ack: int | None = None
        self.stack_seen_window = -1
        # templates for packets the engine builds (docs/ARCHITECTURE.md "Packets the engine builds")
        self.stack_tsval = 0
        self.peer_tsval = 0
        self.out_ttl, self.out_df, self.out_tos = 64, True, 0
        self.in_ttl, self.in_df, self.in_tos = 64, True, 0
        self.peer_window_field = 65535
        # retransmission of injected bytes (RFC 6298; the smoothed RTT is in ``cold``)
        self.rtx_deadline: float | None = None
        self.rtt_probe: tuple[int, float] | None = None  # (wire end, time sent)
        #: packets held until keys exist: (packet_id, parsed packet); the shared empty
        #: tuple while there are none (most flows never hold one)
        self.held: list[tuple[int, object]] | tuple[()] = ()
        self.closed_at: float | None = None
        self.scheduled: float | None = None
        #: the ended flow of the previous connection on this 4-tuple, while the local stack
        #: has not yet accepted this flow's SYN (it may still be in TIME-WAIT and answer in
        #: the old connection's numbers: those are translated through it; RFC 9293
        #: §3.10.7.4).  Only a host-B flow in syn-received has one.
        self.stale: Flow | None = None
        #: the current key generation's limits (RFC 8548 §3.8, engine/rekey.py): the wire
        #: offset and the time at which the next new data starts a new generation
        self.rekey_wire = 0
        self.rekey_time = 0.0
        # counters for status
        self.packets_out = self.packets_in = 0
        self.bytes_out_plain = self.bytes_out_wire = 0
        self.bytes_in_wire = self.bytes_in_plain = 0

    # -- derived --------------------------------------------------------------------------

    @property
    def keyed(self) -> bool:
        return self.session is not None

    def wire_ack_offset(self) -> int:
        """What we acknowledge to the peer: every contiguous wire byte the engine holds.

        The ACK rule (docs/ARCHITECTURE.md "Inbound"): the engine takes responsibility
        for each byte of the peer's wire stream once it is contiguous -- Init bytes are
        consumed, verified frames' plaintext is kept until the local stack ACKs it
        (retransmitted toward it on a timer), and a frame still incomplete is buffered; if it
        later fails authentication the connection is aborted (RFC 8548 §3.6 allows ACKing,
        the price being the abort).  So the wire ACK never waits for a frame larger than the
        local window and never deadlocks; the local stack's own ACK only releases plaintext.
        The peer's FIN alone is acknowledged only once the local stack acknowledged it: the
        peer cannot finish closing while the stack still lacks some of its bytes.
        """
        fin_acked = self.dl_fin_sent and self.stack_rcv_ack >= self.dl_sent
        return self.rx.next + (1 if fin_acked else 0)

    def urgent_pointer(self, local_offset: int) -> int:
        """URG pointer toward the stack for a segment at ``local_offset`` (0: no URG).

        BSD/Linux semantics: it points just after the last urgent byte (RFC 8548 §3.7 URGp
        frames give that byte; the peer's mark stays until the stack acknowledges it).
        """
        urgent = self.rx_urgent
        if urgent is None or not 0 <= urgent - local_offset < 0xFFFF:
            return 0
        return urgent + 1 - local_offset

    def wire_snd_next(self) -> int:
        return self.smap.wire_end + (1 if self.local_fin else 0)

    def undelivered(self) -> bool:
        """Verified plaintext, or the peer's FIN, not yet sent to the stack."""
        return self.dl_sent < self.dl_base + len(self.dl_buf) or (self.rx_fin_done
                                                                 and not self.dl_fin_sent)

    def window_field(self) -> int:
        """The window field toward the peer: the receive window we advertise, in bytes
        beyond our wire ACK, scaled by the stack's shift.

        Room the stack still has beyond the plaintext we already hold, plus frame overhead;
        never less than what completes a partly received frame (no deadlock on a frame
        larger than the local window); never more than the per-flow buffer allows.
        """
        partial = self.rx_partial
        room = (self.stack_rcv_ack + self.stack_window - self.dl_base - len(self.dl_buf)
                - len(partial))
        window = room + 64 if room > 0 else 0
        if partial:
            need = ((partial[1] << 8 | partial[2]) + 3 - len(partial)) if len(partial) >= 3 else 3
            window = max(window, need)
        rx = self.rx
        window = min(window, rx.limit - rx.buffered)
        return min(window >> self.local_wscale, 0xFFFF) if window > 0 else 0

    # -- packets the engine builds --------------------------------------------------------

    def wire_options(self, sack: bool) -> bytes:
        """Options of an engine-made segment toward the wire: timestamps, ``45 02`` while it
        is still sent, SACK blocks of the out-of-order wire bytes (when ``sack``)."""
        if not self.send_eno:
            # what the general editing below gives, built directly (Linux's layout):
            # NOP NOP TS, then NOP NOP SACK with at most 3 blocks (the 40-byte budget)
            raw = TS_LAYOUT + _TS_VALUES.pack(self.stack_tsval, self.peer_tsval) \
                if self.ts_ok else b""
            if sack and self.sack_ok:
                blocks = self.rx.sack_blocks()
                if blocks:
                    isn1 = self.peer_isn + 1
                    raw += bytes((1, 1, 5, 2 + 8 * len(blocks))) + b"".join(
                        _SACK_BLOCK.pack((l + isn1) & MASK32, (r + isn1) & MASK32)
                        for l, r in blocks)
            return raw
        raw = b""
        if self.ts_ok:
            raw = tcp_options.set_timestamps(raw, self.stack_tsval, self.peer_tsval)
        if self.send_eno:
            raw = tcp_options.add(raw, NON_SYN_OPTION)
        if sack and self.sack_ok:
            blocks = self.rx.sack_blocks()
            if blocks:
                isn1 = self.peer_isn + 1
                raw = tcp_options.replace_sack(
                    raw, [((l + isn1) & MASK32, (r + isn1) & MASK32) for l, r in blocks])
        return raw

    def wire_packet(self, wire_offset: int, flags: int, payload: bytes = b"", *,
                    sack: bool = False) -> bytes:
        """A segment toward the wire, from the local address, as the local stack would."""
        version, src, sport, dst, dport = self.key
        seq = (self.local_isn + 1 + wire_offset) & MASK32
        ack_offset = self.cold.final_wire_ack
        if ack_offset is None:
            ack_offset = self.wire_ack_offset()
        ack = (self.peer_isn + 1 + ack_offset) & MASK32
        self.packets_out += 1
        self.bytes_out_wire += len(payload)
        return build(version, src, dst, sport, dport, seq, ack, flags | ACK, self.window_field(),
                     self.wire_options(sack), payload, self.out_ttl, self.out_df, self.out_tos)

    def wire_pieces(self, wire_offset: int, data: bytes, *, fin: bool = False) -> list[Transmit]:
        """Engine-made segments carrying wire bytes ``data`` at ``wire_offset``, PSH on the last."""
        max_payload = max(self.peer_mss - len(self.wire_options(False)), 64)
        pieces = [data[i:i + max_payload] for i in range(0, len(data), max_payload)] or [b""]
        out = []
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            flags = (PSH if last and piece else 0) | (FIN if fin and last else 0)
            out.append(Transmit(self.wire_packet(wire_offset, flags, piece), Direction.OUTBOUND))
            wire_offset += len(piece)
        return out

    def engine_ack(self) -> Transmit:
        """Our own ACK to the peer, with SACK blocks in wire space."""
        return Transmit(self.wire_packet(self.wire_snd_next(), 0, sack=True), Direction.OUTBOUND)

    def local_packet(self, local_offset: int, flags: int, payload: bytes = b"",
                     urg_ptr: int = 0) -> bytes:
        """A segment toward the local stack, from the peer, as the peer would send it."""
        version, src, sport, dst, dport = self.key
        seq = (self.peer_isn + 1 + local_offset) & MASK32
        local_ack = self.cold.final_local_ack
        if local_ack is None:
            local_ack = self.smap.wire_to_local_ack(self.smap.peer_wire_ack)
        ack = (self.local_isn + 1 + local_ack) & MASK32
        raw = TS_LAYOUT + _TS_VALUES.pack(self.peer_tsval, self.stack_tsval) if self.ts_ok else b""
        return build(version, dst, src, dport, sport, seq, ack, flags | ACK,
                     self.peer_window_field, raw, payload, self.in_ttl, self.in_df,
                     self.in_tos, urg_ptr=urg_ptr)

    # -- timers ---------------------------------------------------------------------------

    def rtt_sample(self, sample: float, min_rto: float, max_rto: float) -> None:
        """RFC 6298 §2 smoothing."""
        cold = self.cold
        if cold.srtt is None:
            cold.srtt, cold.rttvar = sample, sample / 2
        else:
            cold.rttvar = 0.75 * cold.rttvar + 0.25 * abs(cold.srtt - sample)
            cold.srtt = 0.875 * cold.srtt + 0.125 * sample
        cold.rto = min(max(cold.srtt + 4 * cold.rttvar, min_rto), max_rto)

    def addresses(self) -> tuple[str, str]:
        """``(local, remote)`` as ``tcpcryptd status`` prints them."""
        return flow_addresses(self.key)

    def status(self, now: float) -> FlowStatus:
        local, remote = flow_addresses(self.key)
        return FlowStatus(
            local=local, remote=remote, state=str(self.state), role=str(self.role),
            tep=_tep_name(self.tep), aead=self.aead_name, session_id=self.session_id.hex(),
            age=now - self.created,
            packets_out=self.packets_out, packets_in=self.packets_in,
            bytes_out_plain=self.bytes_out_plain, bytes_out_wire=self.bytes_out_wire,
            bytes_in_wire=self.bytes_in_wire, bytes_in_plain=self.bytes_in_plain,
            abort_reason=self.abort_reason, resumed=self.resumed,
            generation_out=0 if self.session is None else self.session.local_generation,
            generation_in=0 if self.session is None else self.session.remote_generation)

    @property
    def resumed(self) -> bool:
        """The session was resumed: its session ID's TEP byte has v = 1 (RFC 8548 §3.4)."""
        return bool(self.session_id) and bool(self.session_id[0] & 0x80)


def _cold_attribute(name: str) -> property:
    """``Flow.<name>``: the attribute ``name`` of the flow's :class:`ColdState`."""
    def set_cold(flow: Flow, value: object) -> None:
        setattr(flow.cold, name, value)
    return property(attrgetter(f"cold.{name}"), set_cold,
                    doc=f"``{name}`` of the flow's :class:`ColdState` record")


for _name in ColdState.__slots__:
    setattr(Flow, _name, _cold_attribute(_name))
del _name


def _tep_name(tep: int) -> str:
    """A TEP identifier as status shows it ("" before negotiation)."""
    if not tep:
        return ""
    try:
        return TEP(tep).name
    except ValueError:
        return f"0x{tep:02x}"


class SynRecord:
    """What the two SYN-phase records (:class:`HalfOpen`, :class:`SynSent`) share: the
    attributes the table and timer code read on every flow are class constants here (no
    keys, no deadlines of their own, never closed; nothing is held before the handshake ends,
    there are no keys to wait for), and the status line of a flow not negotiated yet."""

    __slots__ = ()

    key: FlowKey
    role: Role
    state: State
    created: float
    held = ()
    closed_at = None
    session = None
    rtx_deadline = None
    dl_deadline = None
    aead_idle_at = None
    #: the negotiated TEP (0: not negotiated yet)
    tep = 0

    def status(self, now: float) -> FlowStatus:
        local, remote = flow_addresses(self.key)
        return FlowStatus(
            local=local, remote=remote, state=str(self.state), role=str(self.role),
            tep=_tep_name(self.tep), aead="", session_id="", age=now - self.created,
            packets_out=0, packets_in=0, bytes_out_plain=0, bytes_out_wire=0,
            bytes_in_wire=0, bytes_in_plain=0, abort_reason="")


class SynSent(SynRecord):
    """An active ENO flow before the peer's SYN-ACK: the SYN-phase record of host A.

    Whether the peer takes part is known only from its SYN-ACK (RFC 8547 §4.5, §4.6), and
    most peers answer without ENO: the connection then falls back to plain TCP and the flow
    is forgotten.  Until then host A keeps only what it cannot derive again: the local
    stack's SYN as it left the stack (raw bytes, before our option), our SYN-form option
    (identical in every SYN, retransmissions included, RFC 8547 §4.6, §4.8), the cached
    secret the option offers (RFC 8548 §3.5), the ISN, the times and the SYN count.  No ENO
    endpoint, send map, reassembly or buffers: an outbound SYN costs one small object.

    The engine answers the stack's SYNs (retransmitted, or a new one replacing the record),
    its other segments of the SYN phase, the peer's RSTs and a SYN-ACK without ENO from the
    record (:func:`~tcpcryptd.engine.handshake.syn_sent_segment`), and expires it like any
    handshake (``handshake_timeout``).  Any other segment (a SYN-ACK with ENO, the peer's
    SYN of a simultaneous open) promotes it: :func:`~tcpcryptd.engine.handshake.promote`
    builds the :class:`Flow` the SYN would have made, and the flow goes on exactly as if it
    had been a :class:`Flow` all along.
    """

    __slots__ = ("key", "syn", "syn_option", "local_isn", "resume_entry", "created",
                 "last_activity", "syn_sends", "scheduled")

    role = Role.A
    state = State.SYN_SENT
    #: the ENO endpoint is built at promotion: a SYN the record sends takes ``syn_option``
    eno = None
    negotiated = None
    stale = None

    def __init__(self, key: FlowKey, syn: bytes, syn_option: bytes, local_isn: int,
                 resume_entry: CacheEntry | None, now: float) -> None:
        self.key = key
        #: the local stack's SYN as it arrived (IP header included, without our option)
        self.syn = syn
        #: our SYN-form option, added to every SYN
        self.syn_option = syn_option
        self.local_isn = local_isn
        #: the cached secret the option offers (taken from the cache), or None
        self.resume_entry = resume_entry
        #: when the first SYN left (the SYN's RTT sample, RFC 6298 §3, is taken from it)
        self.created = self.last_activity = now
        self.syn_sends = 1
        self.scheduled: float | None = None


class HalfOpen(SynRecord):
    """A passive ENO flow before the peer's third segment: the SYN-phase record.

    Host B learns whether encryption is on only from A's first ACK (RFC 8547 §4.6), and a
    SYN flood never sends one, so until then B keeps only what it cannot derive again: the
    peer's SYN and the local stack's latest SYN-ACK as they arrived (raw bytes), B's answer
    option (identical in every SYN-ACK, RFC 8547 §4.6), the TEP and the SYN's ISN for status
    and the RST check, the times and the SYN-ACK count.  No ENO endpoint, negotiation
    objects, send map, reassembly or buffers: ~0.8 KB instead of ~2.5 KB
    (``python -m bench.flow_memory --half-open N``).

    The engine answers a retransmitted or new SYN, an inbound RST and the stack's SYN-ACKs
    from the record, and expires it like any handshake (``handshake_timeout``).  Any other
    segment promotes it (:meth:`~tcpcryptd.engine.engine.Engine._promote`): the stored
    segments and the record's ENO answer rebuild the :class:`Flow` the SYN and the SYN-ACK
    would have made (:func:`~tcpcryptd.engine.handshake.promote`, without negotiating
    again), so the flow goes on exactly as if it had been a :class:`Flow` all along.
    """

    __slots__ = ("key", "syn", "syn_ack", "syn_option", "tep", "peer_isn", "created",
                 "last_activity", "syn_time", "syn_sends", "scheduled", "stale", "resume_entry")

    role = Role.B
    state = State.SYN_RECEIVED

    def __init__(self, key: FlowKey, syn: bytes, syn_option: bytes, tep: int, peer_isn: int,
                 now: float) -> None:
        self.key = key
        #: the peer's SYN as it arrived (IP header included)
        self.syn = syn
        #: the local stack's latest SYN-ACK as it left it (before B's option), or None
        self.syn_ack: bytes | None = None
        #: B's SYN-form answer, added to every SYN-ACK
        self.syn_option = syn_option
        self.tep = tep
        self.peer_isn = peer_isn
        self.created = self.last_activity = self.syn_time = now
        self.syn_sends = 0
        self.scheduled: float | None = None
        #: as :attr:`Flow.stale`
        self.stale: Flow | None = None
        #: the cached secret B's answer resumes (taken from the cache), or None
        self.resume_entry: CacheEntry | None = None

    @property
    def peer_mss(self) -> int:
        """The MSS of the peer's SYN (RFC 9293 §3.7.1 default without one)."""
        return tcp_options.mss(TCPPacket.parse(self.syn).options) or DEFAULT_MSS[self.key[0]]

    @property
    def stack_window(self) -> int:
        """The window field of the stack's latest SYN-ACK (65535 before one)."""
        return 65535 if self.syn_ack is None else TCPPacket.parse(self.syn_ack).window


#: The timestamp option as Linux lays it out, alone or first: NOP NOP TS (RFC 7323 App. A)
TS_LAYOUT = b"\x01\x01\x08\x0a"
_TS_VALUES = struct.Struct("!II")
_SACK_BLOCK = struct.Struct("!II")


def ip_end(data: bytes, tcp_start: int) -> int:
    """Where a fast-path packet's IP datagram ends, from its length field: IPv4 without
    options (``tcp_start`` 20, total length) or IPv6 without extension headers (40 + payload
    length); bytes beyond are link-layer padding."""
    if tcp_start == 20:
        return (data[2] << 8) | data[3]
    return 40 + ((data[4] << 8) | data[5])


def segment_shape(flow: Flow, data: bytes, tcp_start: int, offset_flags: int
                  ) -> tuple[int, int, int | None, int, int, bool, int] | None:
    """``(flags, header_end, tsval, payload length, ttl, df, tos)`` of a raw segment the
    fast paths may take, or None: ACK set and none of SYN/FIN/RST/URG; on a timestamp flow
    the options start with the timestamps as Linux lays them out (``tsval`` their TSval),
    otherwise there are none; the IP length is consistent with the packet. TTL (hop limit),
    DF and TOS (traffic class) are read as :meth:`TCPPacket.parse` reads them: the
    template fields of engine-made packets.
    """
    flags = offset_flags & 0xFFF
    if flags & NOT_FAST or not flags & ACK:
        return None
    header_end = tcp_start + ((offset_flags >> 12) << 2)
    if flow.ts_ok:
        if header_end < tcp_start + 32 or data[tcp_start + 20:tcp_start + 24] != TS_LAYOUT:
            return None
        tsval: int | None = int.from_bytes(data[tcp_start + 24:tcp_start + 28], "big")
    elif header_end != tcp_start + 20:
        return None
    else:
        tsval = None
    end = ip_end(data, tcp_start)
    if not header_end <= end <= len(data):
        return None
    if tcp_start == 20:
        return flags, header_end, tsval, end - header_end, data[8], bool(data[6] & 0x40), data[1]
    return (flags, header_end, tsval, end - header_end, data[7], True,
            ((data[0] & 0x0F) << 4) | (data[1] >> 4))


def packet_tsval(pkt: TCPPacket) -> int | None:
    """TSval of a segment (RFC 7323 §3), None without the option."""
    raw = pkt.options
    if raw[:4] == TS_LAYOUT:
        return int.from_bytes(raw[4:8], "big")
    ts = tcp_options.timestamps(raw)
    return None if ts is None else ts[0]


def refresh_tsval(pkt: TCPPacket, tsval: int, tsecr: int | None) -> None:
    """Make a segment carry the latest TSval of its sender (and, if given, TSecr).

    Held, reordered or completed-late segments would otherwise carry an older TSval than one
    their receiver already saw and be dropped by PAWS (RFC 7323 §5).
    """
    raw = pkt.options
    if raw[:4] == TS_LAYOUT:
        old = int.from_bytes(raw[4:8], "big")
        if old == tsval or ts_newer(old, tsval):
            tsval = old
            if tsecr is None or int.from_bytes(raw[8:12], "big") == tsecr:
                return
        if tsecr is None:
            tsecr = int.from_bytes(raw[8:12], "big")
        pkt.options = raw[:4] + tsval.to_bytes(4, "big") + tsecr.to_bytes(4, "big") + raw[12:]
        return
    ts = tcp_options.timestamps(raw)
    if ts is None:
        return
    if ts_newer(ts[0], tsval):
        tsval = ts[0]
    pkt.options = tcp_options.set_timestamps(raw, tsval, ts[1] if tsecr is None else tsecr)
