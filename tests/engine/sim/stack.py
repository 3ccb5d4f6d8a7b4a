"""A small, honest model of one endpoint of a local TCP stack (RFC 9293 and friends).

The simulation needs something that behaves like the kernel under the flow engine: it turns an
application byte stream into real IPv4/IPv6 + TCP packets and back, and it reacts to loss,
reordering, duplication and resegmentation the way a real stack does. What it models:

* three-way handshake with Linux-like SYN options (MSS, SACK-permitted, timestamps, window
  scale) and SYN/SYN-ACK retransmission; the MSS announced by the peer is honoured, so an MSS
  clamp applied on the way in changes the segment sizes (RFC 9293 §3.7.1, RFC 6691);
* a windowed sender limited by the peer's (scaled) window and a congestion window (slow start,
  halving on fast retransmit, one segment after a timeout -- RFC 5681 in spirit);
* retransmission on timeout (RFC 6298 RTO with exponential backoff and a retry limit) and on
  three duplicate ACKs, with SACK-guided hole filling (RFC 6675 in spirit).  Retransmissions
  are deliberately *re-segmented*: after a timeout the stack merges what were several
  segments, or splits at odd offsets, as Linux does when it collapses or fragments its queue;
* a receiver with a bounded buffer read by the application at its own pace (zero window and
  window updates), out-of-order queue, SACK blocks (RFC 2018), delayed ACKs (RFC 1122
  §4.2.3.2), timestamps with RFC 7323 PAWS and "no TSopt on a TS connection -> drop";
* zero-window probes (one new byte beyond the window, BSD style) and keep-alive probes
  (seq = SND.NXT - 1 carrying zero or one already-acknowledged byte, RFC 1122 §4.2.3.6);
* FIN handling for normal and simultaneous close, RST (an in-window RST aborts: the error is
  visible to the test), urgent data (URG + urgent pointer, BSD/Linux semantics), and checksum
  verification of every received packet.

Sequence numbers are kept unwrapped (Python ints) inside the model; only the wire sees them
modulo 2**32, so streams may cross the 32-bit wrap.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from enum import Enum

from tcpcryptd.packet import checksum, options, tcp
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, TCPPacket

SEQ_MOD = 1 << 32
HALF = 1 << 31

#: RFC 6298 bounds (seconds).  Linux uses 200 ms as the minimum RTO.
RTO_INITIAL = 1.0
RTO_MIN = 0.2
RTO_MAX = 60.0
#: Linux's minimum delayed-ACK timeout.
DELAYED_ACK = 0.04
#: Timestamp clock: 1 ms per tick, like Linux.
TS_HZ = 1000
#: Linux's TCP_PAWS_WINDOW: a TSval up to one tick older than TS.Recent is still accepted.
PAWS_WINDOW = 1


def seq_diff(a: int, b: int) -> int:
    """Signed 32-bit difference a - b of two sequence numbers (RFC 9293 §3.4)."""
    return ((a - b + HALF) % SEQ_MOD) - HALF


class State(Enum):
    """TCP connection states (RFC 9293 §3.3.2)."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RCVD = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME-WAIT"
    CLOSE_WAIT = "CLOSE-WAIT"
    LAST_ACK = "LAST-ACK"


#: States in which the stack may still send data it has.
_SENDING = {State.ESTABLISHED, State.CLOSE_WAIT}
#: States in which our FIN has been sent.
_FIN_SENT = {State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.TIME_WAIT, State.LAST_ACK}


@dataclass(frozen=True)
class StackConfig:
    """Per-endpoint behaviour knobs (what differs between real stacks)."""

    mtu: int = 1500
    rcv_buffer: int = 256 * 1024
    window_scale: int | None = 7
    sack: bool = True
    timestamps: bool = True
    initial_cwnd_segments: int = 10
    max_retries: int = 12
    keepalive_idle: float | None = None
    keepalive_byte: bool = False
    delayed_ack: bool = True


@dataclass
class Endpoint:
    """Addressing of one side: IP version, address, port."""

    version: int
    addr: bytes
    port: int


@dataclass
class StackStats:
    """What the stack observed; the tests read these."""

    segments_sent: int = 0
    segments_received: int = 0
    retransmits_timeout: int = 0
    retransmits_fast: int = 0
    keepalives_sent: int = 0
    window_probes_sent: int = 0
    dropped_bad_checksum: int = 0
    dropped_no_timestamp: int = 0
    dropped_paws: int = 0
    dropped_unparsable: int = 0
    inconsistent_retransmissions: int = 0
    acks_beyond_sent: int = 0
    sack_beyond_sent: int = 0
    resets_received: int = 0


@dataclass
class _Segment:
    """A segment to emit, before it becomes bytes."""

    seq: int
    flags: int
    payload: bytes = b""
    syn_options: bool = False


class TcpStack:
    """One TCP connection endpoint (an active opener or a one-shot listener).

    Driven by the harness only: ``receive(data, now)`` for a packet from below,
    ``on_timer(now)`` when ``next_timer()`` is due, and the application calls ``write``,
    ``read`` and ``close``.  Packets to send are collected by ``take_output()``.
    """

    def __init__(
        self,
        name: str,
        local: Endpoint,
        remote: Endpoint,
        rng: random.Random,
        config: StackConfig | None = None,
        iss: int | None = None,
    ) -> None:
        self.name = name
        self.local = local
        self.remote = remote
        self.rng = rng
        self.config = config or StackConfig()
        self.stats = StackStats()
        self.state = State.CLOSED
        self.error: str | None = None
        #: the error came after EOF was read and all our data was ACKed: only our FIN was
        #: pending, so the application (which has closed) cannot notice it
        self.error_after_completion = False
        self._output: list[bytes] = []
        self._now = 0.0
        self._ts_offset = rng.getrandbits(32)
        # -- send side (unwrapped sequence numbers) --
        self.iss = rng.getrandbits(32) if iss is None else iss
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss
        self.snd_wnd = 1
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self._send_data = bytearray()
        self._snd_up: int | None = None
        self._close_requested = False
        self._fin_seq: int | None = None
        self.peer_mss = 536
        self.peer_wscale = 0
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self._dupacks = 0
        self._recovery_point: int | None = None
        self._recovery_rexmit = 0
        self._sacked: list[tuple[int, int]] = []
        self._srtt: float | None = None
        self._timed: tuple[int, float] | None = None
        self._rttvar = 0.0
        self.rto = RTO_INITIAL
        self._retries = 0
        self._rtx_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._keepalive_deadline: float | None = None
        self._last_activity = 0.0
        # -- receive side --
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self._rcv_adv_edge = 0
        self._rcv_queue = bytearray()
        self._ooo: dict[int, bytes] = {}
        self._peer_fin_seq: int | None = None
        self.received = bytearray()
        #: stream offsets the peer's urgent pointer marked (one past the last urgent byte)
        self.urgent_marks: set[int] = set()
        self.eof = False
        self._ack_pending = 0
        self._delack_deadline: float | None = None
        self._recent_sack: list[tuple[int, int]] = []
        # -- negotiated options --
        self.sack_ok = False
        self.ts_ok = False
        self.ws_ok = False
        self._ts_recent = 0
        self._last_ack_sent = 0

    # ------------------------------------------------------------------ properties
    @property
    def own_mss(self) -> int:
        """MSS this stack announces: interface MTU minus fixed IP and TCP headers."""
        return self.config.mtu - (40 if self.local.version == 4 else 60)

    @property
    def send_mss(self) -> int:
        """Largest payload per segment: peer MSS less the option bytes of the next data
        segment, timestamps and SACK blocks included, as Linux's tcp_current_mss (RFC 6691)."""
        return max(1, min(self.peer_mss, self.own_mss) - len(self._data_options()))

    @property
    def finished(self) -> bool:
        """True once the connection can do nothing more (closed both ways, or aborted)."""
        return self.error is not None or self.state in (State.TIME_WAIT, State.CLOSED) and (
            self._close_requested and self.eof
        )

    @property
    def bytes_unacked(self) -> int:
        """Written data the peer has not acknowledged yet."""
        return max(0, self.iss + 1 + len(self._send_data) - self.snd_una)

    # ------------------------------------------------------------------ application API
    def connect(self, now: float) -> None:
        """Active open: send a SYN (RFC 9293 §3.10.1)."""
        self._now = now
        self.state = State.SYN_SENT
        self.snd_nxt = self.snd_max = self.iss + 1
        self._timed = (self.iss + 1, now)
        self._emit(_Segment(self.iss, SYN, syn_options=True))
        self._arm_rtx()

    def listen(self) -> None:
        """Passive open."""
        self.state = State.LISTEN

    def write(self, data: bytes, now: float, urgent: bool = False) -> None:
        """The application writes bytes to the socket; ``urgent`` = send(MSG_OOB): the urgent
        pointer then marks the end of these bytes (RFC 9293 §3.8.5, BSD/Linux semantics: it
        points one past the last urgent byte)."""
        if self._close_requested:
            raise ValueError(f"{self.name}: write after close")
        self._now = now
        self._send_data += data
        if urgent and data:
            self._snd_up = self.iss + 1 + len(self._send_data)
        self._push(now)

    def read(self, limit: int, now: float) -> bytes:
        """The application reads up to ``limit`` bytes; may open the window."""
        self._now = now
        old_window = self._window_bytes()
        chunk = bytes(self._rcv_queue[:limit])
        del self._rcv_queue[:limit]
        self.received += chunk
        new_window = self._window_bytes()
        if self.state not in (State.CLOSED, State.LISTEN, State.SYN_SENT, State.TIME_WAIT) and (
            (old_window < self.send_mss <= new_window) or new_window - old_window >= 2 * self.send_mss
        ):
            self._send_ack()
        return chunk

    @property
    def readable(self) -> int:
        """Bytes waiting in the receive buffer."""
        return len(self._rcv_queue)

    def close(self, now: float) -> None:
        """The application closes: FIN after the queued data (RFC 9293 §3.10.4)."""
        self._now = now
        self._close_requested = True
        self._fin_seq = self.iss + 1 + len(self._send_data)
        self._push(now)

    def take_output(self) -> list[bytes]:
        """Packets produced since the last call, in order."""
        out, self._output = self._output, []
        return out

    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """Earliest pending timer, or None."""
        deadlines = [
            d
            for d in (self._rtx_deadline, self._delack_deadline, self._persist_deadline, self._keepalive_deadline)
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._now = now
        if self.error is not None:
            self._rtx_deadline = self._delack_deadline = self._persist_deadline = None
            self._keepalive_deadline = None
            return
        if self._delack_deadline is not None and self._delack_deadline <= now:
            self._delack_deadline = None
            self._send_ack()
        if self._rtx_deadline is not None and self._rtx_deadline <= now:
            self._rtx_deadline = None
            self._on_rto(now)
        if self._persist_deadline is not None and self._persist_deadline <= now:
            self._persist_deadline = None
            self._window_probe(now)
        if self._keepalive_deadline is not None and self._keepalive_deadline <= now:
            self._keepalive_deadline = None
            self._keepalive(now)

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes, now: float) -> None:
        """Process one packet from below (wire or engine)."""
        self._now = now
        try:
            pkt = TCPPacket.parse(data)
        except tcp.PacketError:
            self.stats.dropped_unparsable += 1
            return
        if checksum.tcp_checksum(pkt.src, pkt.dst, _tcp_segment(data, pkt)) != 0:
            self.stats.dropped_bad_checksum += 1
            return
        self.stats.segments_received += 1
        if self.error is not None or self.state is State.CLOSED:
            if not pkt.flags & RST:
                self._reset_reply(pkt)
            return
        if self.state is State.LISTEN:
            self._on_listen(pkt)
        elif self.state is State.SYN_SENT:
            self._on_syn_sent(pkt)
        else:
            self._on_synchronized(pkt)
        self._last_activity = now
        self._arm_keepalive()

    # ------------------------------------------------------------------ handshake
    def _on_listen(self, pkt: TCPPacket) -> None:
        if pkt.flags & RST:
            return
        if pkt.flags & ACK or not pkt.flags & SYN:
            self._reset_reply(pkt)
            return
        self._take_syn_options(pkt)
        self.irs = pkt.seq
        self.rcv_nxt = pkt.seq + 1
        self.state = State.SYN_RCVD
        self.snd_nxt = self.snd_max = self.iss + 1
        self._timed = (self.iss + 1, self._now)
        self._emit(_Segment(self.iss, SYN | ACK, syn_options=True))
        self._arm_rtx()

    def _on_syn_sent(self, pkt: TCPPacket) -> None:
        if pkt.flags & ACK and seq_diff(pkt.ack, (self.iss + 1) % SEQ_MOD) != 0:
            if not pkt.flags & RST:
                self._reset_reply(pkt)
            return
        if pkt.flags & RST:
            if pkt.flags & ACK:
                self._abort("connection refused (RST in SYN-SENT)", send_rst=False)
            return
        if pkt.flags & SYN and not pkt.flags & ACK:
            # simultaneous open (RFC 9293 §3.5, Figure 8): SYN-RECEIVED, our SYN again with
            # an ACK of theirs; their SYN-ACK completes the handshake
            self._take_syn_options(pkt)
            self.irs = pkt.seq
            self.rcv_nxt = pkt.seq + 1
            self.state = State.SYN_RCVD
            self._emit(_Segment(self.iss, SYN | ACK, syn_options=True))
            self._arm_rtx()
            return
        if not pkt.flags & SYN:
            return
        self._take_syn_options(pkt)
        self.irs = pkt.seq
        self.rcv_nxt = pkt.seq + 1
        self.snd_una = self.iss + 1
        self._update_window(pkt, force=True)
        self._rtx_deadline = None
        self._retries = 0
        self._sample_rtt()
        self._enter_established()
        self._send_ack()
        self._push(self._now)

    def _take_syn_options(self, pkt: TCPPacket) -> None:
        raw = pkt.options
        mss = options.mss(raw)
        self.peer_mss = mss if mss is not None else 536
        peer_ws = options.wscale(raw)
        self.ws_ok = self.config.window_scale is not None and peer_ws is not None
        if self.ws_ok:
            self.peer_wscale = min(peer_ws, 14)
            self.rcv_wscale = self.config.window_scale or 0
        self.sack_ok = self.config.sack and options.sack_permitted(raw)
        ts = options.timestamps(raw)
        self.ts_ok = self.config.timestamps and ts is not None
        if ts is not None and self.ts_ok:
            self._ts_recent = ts[0]

    def _enter_established(self) -> None:
        self.state = State.ESTABLISHED
        self.cwnd = self.config.initial_cwnd_segments * self.send_mss

    # ------------------------------------------------------------------ synchronized states
    def _on_synchronized(self, pkt: TCPPacket) -> None:
        seg_seq = self.rcv_nxt + seq_diff(pkt.seq, self.rcv_nxt % SEQ_MOD)
        payload = bytes(pkt.payload)
        if pkt.flags & RST:
            # RFC 5961 §3.2 simplified: an RST exactly at RCV.NXT, or inside the window, aborts.
            if 0 <= seg_seq - self.rcv_nxt <= max(self._window_bytes(), 1):
                self.stats.resets_received += 1
                if self.state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
                    self._close_silently()  # RFC 9293 §3.10.7.4: no error for the user here
                else:
                    self._abort("connection reset by peer", send_rst=False)
            return
        simultaneous_synack = (pkt.flags & SYN and pkt.flags & ACK and self.state is State.SYN_RCVD
                               and seg_seq == self.irs and pkt.ack == (self.iss + 1) % SEQ_MOD)
        if pkt.flags & SYN and not simultaneous_synack:
            if self.state is State.SYN_RCVD and seg_seq == self.irs:
                self._emit(_Segment(self.iss, SYN | ACK, syn_options=True))  # peer lost our SYN-ACK
            else:
                self._send_ack()  # RFC 5961 §4: challenge ACK
            return
        if self.ts_ok:
            ts = options.timestamps(pkt.options)
            if ts is None:
                self.stats.dropped_no_timestamp += 1  # RFC 7323 §3.2
                return
            if seq_diff(self._ts_recent, ts[0]) > PAWS_WINDOW:
                self.stats.dropped_paws += 1  # RFC 7323 §5.3 PAWS
                self._send_ack()
                return
            if seq_diff(pkt.seq, self._last_ack_sent % SEQ_MOD) <= 0 < seq_diff(
                (pkt.seq + len(payload) + (1 if pkt.flags & FIN else 0)) % SEQ_MOD, self._last_ack_sent % SEQ_MOD
            ) or (len(payload) == 0 and seq_diff(pkt.seq, self._last_ack_sent % SEQ_MOD) <= 0):
                self._ts_recent = ts[0]
        if not pkt.flags & ACK:
            return
        if self.state is State.SYN_RCVD:
            ack = self.snd_una + seq_diff(pkt.ack, self.snd_una % SEQ_MOD)
            if ack != self.iss + 1:
                self._reset_reply(pkt)
                return
            self.snd_una = ack
            self._rtx_deadline = None
            self._retries = 0
            self._update_window(pkt, force=True)
            self._sample_rtt()
            self._enter_established()
            if simultaneous_synack:
                self._send_ack()   # the peer's SYN-ACK is answered (its SYN took one number)
                return
        self._process_ack(pkt)
        if self.error is not None:
            return
        if pkt.flags & URG:
            self.urgent_marks.add(seg_seq + pkt.urg_ptr - (self.irs + 1))
        self._process_data(seg_seq, payload, bool(pkt.flags & FIN))
        self._push(self._now)

    # ------------------------------------------------------------------ ACK processing (sender)
    def _process_ack(self, pkt: TCPPacket) -> None:
        ack = self.snd_una + seq_diff(pkt.ack, self.snd_una % SEQ_MOD)
        if ack > self.snd_max:
            self.stats.acks_beyond_sent += 1
            self._send_ack()  # RFC 9293 §3.10.7.4: ACK of something not yet sent
            return
        if self.sack_ok:
            self._take_sack(pkt)
        window_changed = self._update_window(pkt)
        if ack > self.snd_una:
            acked = ack - self.snd_una
            self.snd_una = ack
            self.snd_nxt = max(self.snd_nxt, self.snd_una)
            self._sacked = [(l, r) for l, r in self._sacked if r > ack]
            self._sample_rtt()
            self._retries = 0
            self._persist_backoff = 0
            if self._recovery_point is not None:
                if ack >= self._recovery_point:
                    self._recovery_point = None
                    self.cwnd = self.ssthresh
                else:
                    self._retransmit_hole()  # partial ACK (RFC 6582)
            elif self.cwnd < self.ssthresh:
                self.cwnd += min(acked, self.send_mss)
            else:
                self.cwnd += max(1, self.send_mss * self.send_mss // max(self.cwnd, 1))
            self._dupacks = 0
            self._rtx_deadline = None
            if self.snd_max > self.snd_una:
                self._arm_rtx()
            self._after_fin_acked()
        elif (
            ack == self.snd_una
            and not pkt.payload
            and not pkt.flags & FIN
            and not window_changed
            and self.snd_max > self.snd_una
        ):
            self._dupacks += 1
            if self._dupacks == 3 and self._recovery_point is None:
                flight = self.snd_max - self.snd_una
                self.ssthresh = max(flight // 2, 2 * self.send_mss)
                self.cwnd = self.ssthresh
                self._recovery_point = self.snd_max
                self._recovery_rexmit = self.snd_una
                self._retransmit_hole()
            elif self._dupacks > 3 and self._recovery_point is not None and self._sacked:
                self._retransmit_hole()

    def _after_fin_acked(self) -> None:
        if self._fin_seq is None or self.snd_una <= self._fin_seq:
            return
        if self.state is State.FIN_WAIT_1:
            self.state = State.FIN_WAIT_2
        elif self.state is State.CLOSING:
            self.state = State.TIME_WAIT
        elif self.state is State.LAST_ACK:
            self.state = State.CLOSED

    def _take_sack(self, pkt: TCPPacket) -> None:
        for left, right in options.sack_blocks(pkt.options):
            l_unw = self.snd_una + seq_diff(left, self.snd_una % SEQ_MOD)
            r_unw = self.snd_una + seq_diff(right, self.snd_una % SEQ_MOD)
            if r_unw > self.snd_max or l_unw >= r_unw:
                self.stats.sack_beyond_sent += 1  # a block for bytes never sent, or empty
            elif r_unw > self.snd_una:
                self._sacked.append((max(l_unw, self.snd_una), r_unw))
        self._sacked = _merge(self._sacked)

    def _update_window(self, pkt: TCPPacket, force: bool = False) -> bool:
        """RFC 9293 §3.10.7.4 window update; returns True if the window value changed."""
        seq, ack = pkt.seq, pkt.ack
        if not (
            force
            or seq_diff(self.snd_wl1, seq) < 0
            or (self.snd_wl1 == seq and seq_diff(self.snd_wl2, ack) <= 0)
        ):
            return False
        window = pkt.window if pkt.flags & SYN else pkt.window << self.peer_wscale
        changed = window != self.snd_wnd
        self.snd_wnd = window
        self.snd_wl1, self.snd_wl2 = seq, ack
        return changed

    def _sample_rtt(self) -> None:
        """RFC 6298 estimator fed by one timed segment never retransmitted (Karn's algorithm).

        Echoed timestamps are not used: during recovery they echo the oldest unacknowledged
        segment (RFC 7323 §4.3) and would inflate the RTO far beyond what Linux computes."""
        if self._timed is None or self.snd_una < self._timed[0]:
            return
        rtt = self._now - self._timed[1]
        self._timed = None
        if rtt > RTO_MAX:
            return
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self.rto = min(RTO_MAX, max(RTO_MIN, self._srtt + 4 * self._rttvar))

    # ------------------------------------------------------------------ data (receiver)
    def _process_data(self, seg_seq: int, payload: bytes, fin: bool) -> None:
        if fin:
            fin_seq = seg_seq + len(payload)
            if self._peer_fin_seq is None:
                self._peer_fin_seq = fin_seq
        if not payload and not fin:
            return
        window = self._window_bytes()
        edge = max(self.rcv_nxt + window, self._rcv_adv_edge)
        start, end = seg_seq, seg_seq + len(payload)
        if payload:
            if end <= self.rcv_nxt or start >= edge:
                self._send_ack()  # duplicate or outside the window: ACK, drop
                return
            cut_start = max(start, self.rcv_nxt)
            cut_end = min(end, edge)
            piece = payload[cut_start - start : cut_end - start]
            self._check_consistency(start, payload)
            if cut_start == self.rcv_nxt:
                self._deliver(piece)
                filled = self._drain_ooo()
                self._ack_pending += len(piece)
                if filled or self._ack_pending >= 2 * self.send_mss or not self.config.delayed_ack:
                    self._send_ack()
                elif self._delack_deadline is None:
                    self._delack_deadline = self._now + DELAYED_ACK
            else:
                self._ooo[cut_start] = piece
                self._record_sack(cut_start, cut_start + len(piece))
                self._send_ack()  # out of order: immediate duplicate ACK with SACK
        if self._peer_fin_seq is not None and self.rcv_nxt == self._peer_fin_seq and not self.eof:
            self.rcv_nxt += 1
            self.eof = True
            if self.state is State.ESTABLISHED:
                self.state = State.CLOSE_WAIT
            elif self.state is State.FIN_WAIT_1:
                self.state = State.TIME_WAIT if self._fin_acked() else State.CLOSING
            elif self.state is State.FIN_WAIT_2:
                self.state = State.TIME_WAIT
            self._send_ack()
        elif fin and self.eof:
            self._send_ack()  # retransmitted FIN: ACK again

    def _fin_acked(self) -> bool:
        return self._fin_seq is not None and self.snd_una > self._fin_seq

    def _check_consistency(self, start: int, payload: bytes) -> None:
        """Count retransmitted bytes that differ from what arrived before at the same seq."""
        received_from = self.irs + 1
        # Bytes already taken in order: compare with the delivered stream.
        overlap_end = min(start + len(payload), self.rcv_nxt)
        if start < overlap_end:
            stream = self.received + self._rcv_queue
            base = start - received_from
            if base >= 0 and stream[base : base + overlap_end - start] != payload[: overlap_end - start]:
                self.stats.inconsistent_retransmissions += 1
        for o_start, o_data in self._ooo.items():
            o_end = o_start + len(o_data)
            s, e = max(start, o_start), min(start + len(payload), o_end)
            if s < e and o_data[s - o_start : e - o_start] != payload[s - start : e - start]:
                self.stats.inconsistent_retransmissions += 1

    def _deliver(self, piece: bytes) -> None:
        self._rcv_queue += piece
        self.rcv_nxt += len(piece)

    def _drain_ooo(self) -> bool:
        filled = False
        progress = True
        while progress:
            progress = False
            for o_start in sorted(self._ooo):
                o_data = self._ooo[o_start]
                if o_start <= self.rcv_nxt:
                    del self._ooo[o_start]
                    tail = o_data[self.rcv_nxt - o_start :]
                    if tail:
                        self._deliver(tail)
                        filled = True
                    progress = True
                    break
        self._recent_sack = [(l, r) for l, r in self._recent_sack if r > self.rcv_nxt]
        return filled

    def _record_sack(self, left: int, right: int) -> None:
        """Most recently received block first (RFC 2018 §4)."""
        merged = [(left, right)]
        for l, r in self._recent_sack:
            if r >= merged[0][0] and l <= merged[0][1]:
                merged[0] = (min(l, merged[0][0]), max(r, merged[0][1]))
            else:
                merged.append((l, r))
        self._recent_sack = merged

    def _window_bytes(self) -> int:
        free = self.config.rcv_buffer - len(self._rcv_queue)
        if free < min(self.send_mss, self.config.rcv_buffer // 2):
            return 0  # receiver-side silly window avoidance (RFC 1122 §4.2.3.3)
        return free

    # ------------------------------------------------------------------ output
    def _push(self, now: float) -> None:
        """Send whatever the windows allow: new data, a FIN (RFC 9293 §3.10.2)."""
        if self.error is not None or self.state not in _SENDING | _FIN_SENT:
            return
        while True:
            data_end = self.iss + 1 + len(self._send_data)
            if self.snd_nxt < self.snd_max:
                for left, right in self._sacked:
                    if left <= self.snd_nxt < right:
                        self.snd_nxt = right  # skip what the peer has SACKed
            avail = data_end - self.snd_nxt
            wnd_room = self.snd_una + self.snd_wnd - self.snd_nxt
            cwnd_room = self.snd_una + self.cwnd - self.snd_nxt
            size = min(avail, wnd_room, cwnd_room, self._segment_size())
            fin_due = self._fin_seq is not None and self.snd_nxt + max(size, 0) == self._fin_seq
            if size <= 0 and not fin_due:
                break
            size = max(size, 0)
            flags = ACK | (PSH if size and self.snd_nxt + size == data_end else 0)
            if fin_due:
                flags |= FIN
                if self.state is State.ESTABLISHED:
                    self.state = State.FIN_WAIT_1
                elif self.state is State.CLOSE_WAIT:
                    self.state = State.LAST_ACK
            self._emit(_Segment(self.snd_nxt, flags, self._data_at(self.snd_nxt, size)))
            if self._timed is None and self.snd_nxt >= self.snd_max:
                self._timed = (self.snd_nxt + size + (1 if fin_due else 0), now)
            self.snd_nxt += size + (1 if fin_due else 0)
            self.snd_max = max(self.snd_max, self.snd_nxt)
            if self._rtx_deadline is None:
                self._arm_rtx()
            if fin_due:
                break
        if (
            self.snd_nxt == self.snd_una
            and self.snd_wnd == 0
            and self.iss + 1 + len(self._send_data) > self.snd_nxt
            and self._persist_deadline is None
        ):
            self._persist_deadline = now + min(RTO_MAX, self.rto * (1 << self._persist_backoff))

    def _segment_size(self) -> int:
        """MSS for new data; retransmitted ranges may be cut differently (re-segmentation)."""
        if self.snd_nxt < self.snd_max:
            return self._retransmit_size()
        return self.send_mss

    def _retransmit_size(self) -> int:
        """Merge (full MSS, covering several original segments) or split at an odd offset."""
        mss = self.send_mss
        if self.rng.random() < 0.5:
            return mss
        return min(mss, self.rng.randrange(1, mss + 1) | 1)

    def _data_at(self, seq: int, size: int) -> bytes:
        offset = seq - (self.iss + 1)
        return bytes(self._send_data[offset : offset + size])

    def _retransmit_hole(self) -> None:
        """Retransmit the first range above SND.UNA neither SACKed nor already retransmitted
        in this recovery (fast retransmit; each hole once per recovery, RFC 6675 §4 NextSeg)."""
        start = max(self.snd_una, self._recovery_rexmit)
        for left, right in self._sacked:
            if left <= start < right:
                start = right
        hole_end = self.snd_max
        for left, _ in self._sacked:
            if left > start:
                hole_end = min(hole_end, left)
                break
        data_end = self.iss + 1 + len(self._send_data)
        size = min(self._retransmit_size(), max(0, min(hole_end, data_end) - start))
        fin = self._fin_seq is not None and start + size == self._fin_seq and hole_end > self._fin_seq
        if size == 0 and not fin:
            return
        self.stats.retransmits_fast += 1
        self._timed = None
        self._recovery_rexmit = start + size + (1 if fin else 0)
        self._emit(_Segment(start, ACK | (FIN if fin else 0), self._data_at(start, size)))

    def _on_rto(self, now: float) -> None:
        """RFC 6298 §5.4-5.7: back off, retransmit from SND.UNA."""
        if self.snd_max <= self.snd_una and self.state not in (State.SYN_SENT, State.SYN_RCVD):
            return
        self._retries += 1
        if self._retries > self.config.max_retries:
            self._abort("retransmission timeout", send_rst=True)
            return
        self.rto = min(RTO_MAX, self.rto * 2)
        self.stats.retransmits_timeout += 1
        self._timed = None
        if self.state is State.SYN_SENT:
            self._emit(_Segment(self.iss, SYN, syn_options=True))
        elif self.state is State.SYN_RCVD:
            self._emit(_Segment(self.iss, SYN | ACK, syn_options=True))
        else:
            flight = self.snd_max - self.snd_una
            self.ssthresh = max(flight // 2, 2 * self.send_mss)
            self.cwnd = self.send_mss
            self._recovery_point = None
            self._dupacks = 0
            self._sacked = []  # RFC 6675 §5.1: SACK information may be reneged after RTO
            self.snd_nxt = self.snd_una
            if self._fin_seq is not None and self.snd_una > self._fin_seq:
                return
            self._push(now)
        self._arm_rtx()

    def _window_probe(self, now: float) -> None:
        """Zero-window probe: one new byte beyond the window (RFC 9293 §3.8.6.1)."""
        data_end = self.iss + 1 + len(self._send_data)
        if self.snd_wnd != 0 or self.snd_nxt >= data_end or self.error is not None:
            return
        self.stats.window_probes_sent += 1
        self._emit(_Segment(self.snd_nxt, ACK, self._data_at(self.snd_nxt, 1)))
        self.snd_max = max(self.snd_max, self.snd_nxt + 1)
        self._persist_backoff = min(self._persist_backoff + 1, 6)
        self._persist_deadline = now + min(RTO_MAX, self.rto * (1 << self._persist_backoff))

    def _arm_keepalive(self) -> None:
        if self.config.keepalive_idle is None or self.state is not State.ESTABLISHED:
            self._keepalive_deadline = None
            return
        self._keepalive_deadline = self._last_activity + self.config.keepalive_idle

    def _keepalive(self, now: float) -> None:
        """RFC 1122 §4.2.3.6: SEG.SEQ = SND.NXT - 1, with zero or one (old) byte."""
        if self.state is not State.ESTABLISHED or self.snd_max > self.snd_una:
            self._last_activity = now
            self._arm_keepalive()
            return
        self.stats.keepalives_sent += 1
        probe_seq = self.snd_nxt - 1
        payload = b""
        if self.config.keepalive_byte and probe_seq > self.iss:
            payload = self._data_at(probe_seq, 1)
        self._emit(_Segment(probe_seq, ACK, payload))
        self._last_activity = now
        self._arm_keepalive()

    def _arm_rtx(self) -> None:
        self._rtx_deadline = self._now + self.rto

    def _send_ack(self) -> None:
        self._delack_deadline = None
        self._ack_pending = 0
        if self.state in (State.CLOSED, State.LISTEN, State.SYN_SENT) or self.error is not None:
            return
        self._emit(_Segment(self.snd_nxt, ACK))

    def _abort(self, reason: str, send_rst: bool) -> None:
        """RFC 793 ABORT: optionally send RST, destroy the TCB, signal the error."""
        if send_rst and self.state not in (State.CLOSED, State.LISTEN):
            self._emit(_Segment(self.snd_nxt, RST | ACK))
        self.error = reason
        self.error_after_completion = self.eof and self._fin_seq is not None and self.bytes_unacked == 0
        self._close_silently()

    def _close_silently(self) -> None:
        self.state = State.CLOSED
        self._rtx_deadline = self._delack_deadline = self._persist_deadline = None
        self._keepalive_deadline = None

    def _reset_reply(self, pkt: TCPPacket) -> None:
        """RFC 9293 §3.10.7.1: answer a segment for no connection with RST."""
        if pkt.flags & ACK:
            self._output.append(self._build(pkt.ack, 0, RST, b"", b""))
        else:
            seg_len = len(pkt.payload) + (1 if pkt.flags & SYN else 0) + (1 if pkt.flags & FIN else 0)
            self._output.append(self._build(0, (pkt.seq + seg_len) % SEQ_MOD, RST | ACK, b"", b""))

    # ------------------------------------------------------------------ encoding
    def _tsval(self) -> int:
        return (int(self._now * TS_HZ) + self._ts_offset) % SEQ_MOD

    def _emit(self, seg: _Segment) -> None:
        if seg.syn_options:
            raw = self._syn_options(bool(seg.flags & ACK))
        else:
            raw = self._data_options()
        ack = self.rcv_nxt % SEQ_MOD if seg.flags & ACK else 0
        if seg.flags & ACK:
            self._last_ack_sent = self.rcv_nxt
            self._delack_deadline = None
            self._ack_pending = 0
        flags, urg_ptr = seg.flags, 0
        if (
            self._snd_up is not None
            and self._snd_up > max(seg.seq, self.snd_una)
            and self._snd_up - seg.seq <= 0xFFFF
            and not flags & (SYN | RST)
        ):
            # Every segment while urgent data is outstanding and the pointer fits in 16 bits
            # (Linux tcp_transmit_skb; its 0xFFFF "further ahead" variant is not modelled).
            flags |= URG
            urg_ptr = self._snd_up - seg.seq
        self.stats.segments_sent += 1
        self._output.append(self._build(seg.seq % SEQ_MOD, ack, flags, raw, seg.payload, urg_ptr))

    def _build(
        self, seq: int, ack: int, flags: int, raw_options: bytes, payload: bytes, urg_ptr: int = 0
    ) -> bytes:
        if flags & SYN:
            window = min(self._window_bytes() or self.config.rcv_buffer, 0xFFFF)
        elif self.state is State.CLOSED and self.error is None and not flags & ACK:
            window = 0
        else:
            window = min(self._window_bytes() >> self.rcv_wscale, 0xFFFF)
            self._rcv_adv_edge = max(self._rcv_adv_edge, self.rcv_nxt + (window << self.rcv_wscale))
        return tcp.build(
            self.local.version,
            self.local.addr,
            self.remote.addr,
            self.local.port,
            self.remote.port,
            seq,
            ack,
            flags,
            window,
            options=raw_options,
            payload=payload,
            urg_ptr=urg_ptr,
        )

    def _syn_options(self, is_synack: bool) -> bytes:
        """Linux order: MSS, SACK-permitted, timestamps, NOP, window scale (20 bytes)."""
        cfg = self.config
        out = struct.pack("!BBH", 2, 4, self.own_mss)
        sack = cfg.sack and (not is_synack or self.sack_ok)
        ts = cfg.timestamps and (not is_synack or self.ts_ok)
        ws = cfg.window_scale is not None and (not is_synack or self.ws_ok)
        if sack and ts:
            out += b"\x04\x02" + struct.pack("!BBII", 8, 10, self._tsval(), self._ts_recent if is_synack else 0)
        elif ts:
            out += b"\x01\x01" + struct.pack("!BBII", 8, 10, self._tsval(), self._ts_recent if is_synack else 0)
        elif sack:
            out += b"\x01\x01\x04\x02"
        if ws:
            out += b"\x01" + struct.pack("!BBB", 3, 3, cfg.window_scale or 0)
        return out

    def _data_options(self) -> bytes:
        """NOP NOP TS, then NOP NOP SACK with as many blocks as fit in 40 bytes."""
        out = b""
        if self.ts_ok:
            out += b"\x01\x01" + struct.pack("!BBII", 8, 10, self._tsval(), self._ts_recent)
        if self.sack_ok and self._recent_sack:
            room = (40 - len(out) - 4) // 8
            blocks = self._recent_sack[:room]
            out += b"\x01\x01" + struct.pack("!BB", 5, 2 + 8 * len(blocks))
            for left, right in blocks:
                out += struct.pack("!II", left % SEQ_MOD, right % SEQ_MOD)
        return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for left, right in sorted(ranges):
        if out and left <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], right))
        else:
            out.append((left, right))
    return out


def _tcp_segment(data: bytes, pkt: TCPPacket) -> bytes:
    """The TCP header + payload of a packet (what the checksum covers; no link padding here)."""
    tcp_len = 20 + len(pkt.options) + len(pkt.payload)
    return data[len(data) - tcp_len :]


__all__ = ["Endpoint", "StackConfig", "StackStats", "State", "TcpStack", "seq_diff"]
