"""An impaired wire between the two hosts of the simulation, driven by a seeded RNG.

Random impairments (each decided per packet, reproducibly from the scenario seed): loss,
duplication, delay with jitter (which reorders), and resegmentation -- a data segment split into
pieces at arbitrary offsets, or coalesced with the adjacent segment still queued behind it --
as middleboxes and offloading NICs do.  Every rebuilt packet gets fresh, correct checksums
from the packet codec, so only the engine's own checksum mistakes make a stack drop a packet.

Targeted impairments: drop the n-th packet of a named kind in one direction (SYN, SYN-ACK,
third ACK, the packet carrying Init1 or Init2, the first data segment, the FIN), flip one bit
of one payload byte of a chosen data packet (tampering), and a middlebox that strips the ENO
option from SYN-ACKs (RFC 8547 §6, Fig. 11).

Packets larger than the path MTU are not delivered (DF is set, as the kernel would drop
them); each one is recorded as a violation because a real flow would stall on it.
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

from tcpcryptd.core.constants import ENO_KIND
from tcpcryptd.packet import options, tcp
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, TCPPacket

from .stack import seq_diff

#: Direction names on the wire: from the active opener (client) or from the server.
C2S = "c2s"
S2C = "s2c"

#: Kinds a TargetedDrop can name.
DROP_KINDS = ("syn", "synack", "third_ack", "init1", "init2", "data", "fin")


@dataclass(frozen=True)
class Impairments:
    """Random impairment rates (probabilities per packet) and delays (seconds)."""

    loss: float = 0.0
    duplicate: float = 0.0
    jitter: float = 0.0
    resegment: float = 0.0
    latency: float = 0.005
    #: drops on the host's own path after the engine, toward the local stack (a later
    #: netfilter rule, a full socket backlog): what the engine delivered can still be lost
    local_loss: float = 0.0


@dataclass(frozen=True)
class TargetedDrop:
    """Drop the ``nth`` (1-based) packet of ``kind`` sent in ``direction``, and ``count - 1`` more.

    ``data`` counts packets carrying stream bytes beyond the Init message (all payload on a
    plain flow), so ``TargetedDrop(C2S, "data")`` drops the first data segment.
    """

    direction: str
    kind: str
    nth: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in DROP_KINDS or self.direction not in (C2S, S2C):
            raise ValueError(f"unknown targeted drop {self.direction}:{self.kind}")


@dataclass(frozen=True)
class ByteFlip:
    """Flip one bit of one payload byte: in the frames of the ``nth`` data packet of
    ``direction``, or (``in_init``) in the Init message of the first packet carrying it."""

    direction: str
    nth: int
    position_seed: int
    in_init: bool = False


@dataclass
class WireStats:
    """What the wire did; for reports and assertions."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    split: int = 0
    coalesced: int = 0
    targeted_drops: list[str] = field(default_factory=list)
    flips: list[str] = field(default_factory=list)
    eno_stripped: int = 0
    oversize: list[str] = field(default_factory=list)


@dataclass
class _DirectionView:
    """What the wire knows about one direction, to recognise targeted packets."""

    isn: int | None = None
    init_len: int | None = None
    third_ack_seen: bool = False
    kind_counts: dict[str, int] = field(default_factory=dict)


@dataclass(order=True)
class _InFlight:
    arrival: float
    order: int
    direction: str = field(compare=False)
    data: bytes = field(compare=False)


class Wire:
    """Carries packets between the client side and the server side with impairments."""

    def __init__(
        self,
        rng: random.Random,
        impairments: Impairments,
        mtu: int,
        *,
        eno_flow: bool,
        targeted: tuple[TargetedDrop, ...] = (),
        flip: ByteFlip | None = None,
        strip_synack_eno: bool = False,
        target_key: int | None = None,
    ) -> None:
        self.rng = rng
        self.impairments = impairments
        self.mtu = mtu
        self.eno_flow = eno_flow
        self.targeted = targeted
        self.flip = flip
        self.strip_synack_eno = strip_synack_eno
        self.stats = WireStats()
        self._queue: list[_InFlight] = []
        self._order = 0
        #: targeted drops and the flip apply to the connection with this key only
        self.target_key = target_key
        self._views: dict[tuple[int, str], _DirectionView] = {}

    # ------------------------------------------------------------------ API
    def send(self, direction: str, data: bytes, now: float, key: int) -> None:
        """A packet of connection ``key`` enters the wire from the side sending in ``direction``."""
        self.stats.sent += 1
        pkt = TCPPacket.parse(data)
        if len(data) > self.mtu:
            self.stats.oversize.append(f"{direction} seq={pkt.seq} len={len(data)} > mtu {self.mtu}")
            return
        view = self._views.setdefault((key, direction), _DirectionView())
        kinds = self._classify(direction, pkt, view) if key == self.target_key else []
        for kind in kinds:
            view.kind_counts[kind] = view.kind_counts.get(kind, 0) + 1
        for kind in kinds:
            if self._targeted_drop(direction, kind, view.kind_counts[kind]):
                self.stats.targeted_drops.append(f"{direction}:{kind}")
                return
        if self.strip_synack_eno and pkt.flags & SYN and pkt.flags & ACK:
            stripped = options.remove(pkt.options, ENO_KIND)
            if stripped != pkt.options:
                self.stats.eno_stripped += 1
                data = _rebuild(pkt, options_raw=stripped)
                pkt = TCPPacket.parse(data)
        flip = self.flip
        if flip is not None and flip.direction == direction and kinds:
            init_kind = "init1" if direction == C2S else "init2"
            if flip.in_init and init_kind in kinds and view.kind_counts[init_kind] == 1:
                data = self._flip_byte(pkt, 0, min(len(pkt.payload), view.init_len or 0))
            elif not flip.in_init and "data" in kinds and view.kind_counts["data"] == flip.nth:
                first = (view.init_len or 0) - ((pkt.seq - (view.isn or 0) - 1) % (1 << 32))
                data = self._flip_byte(pkt, max(0, first), len(pkt.payload))
                pkt = TCPPacket.parse(data)
        imp = self.impairments
        if self.rng.random() < imp.loss:
            self.stats.lost += 1
            return
        copies = 2 if self.rng.random() < imp.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            pieces = [data]
            if pkt.payload and not pkt.flags & (SYN | RST) and self.rng.random() < imp.resegment:
                if len(pkt.payload) > 1 and self.rng.random() < 0.6:
                    pieces = self._split(pkt)
                elif self._coalesce(direction, pkt, now):
                    continue
            for piece in pieces:
                self._schedule(direction, piece, now)

    def next_arrival(self) -> float | None:
        """Arrival time of the next packet, or None if the wire is empty."""
        return self._queue[0].arrival if self._queue else None

    def arrivals_now(self, direction: str, now: float) -> list[bytes]:
        """The packets of ``direction`` next in arrival order that arrive by ``now`` (GRO)."""
        due = sorted((item for item in self._queue if item.arrival <= now),
                     key=lambda item: (item.arrival, item.order))
        out = []
        for item in due:
            if item.direction != direction:
                break
            out.append(item.data)
        return out

    def pop_arrival(self) -> tuple[str, bytes]:
        """The next packet to arrive: (direction, bytes)."""
        item = heapq.heappop(self._queue)
        self.stats.delivered += 1
        return item.direction, item.data

    # ------------------------------------------------------------------ classification
    def _classify(self, direction: str, pkt: TCPPacket, view: _DirectionView) -> list[str]:
        """Name the kinds a packet counts as (learning ISN and Init length on the way)."""
        kinds: list[str] = []
        flags = pkt.flags
        if flags & SYN:
            view.isn = pkt.seq
            kinds.append("synack" if flags & ACK else "syn")
            return kinds
        if flags & RST or view.isn is None:
            return kinds
        if direction == C2S and not view.third_ack_seen and flags & ACK:
            view.third_ack_seen = True
            kinds.append("third_ack")
        offset = (pkt.seq - view.isn - 1) % (1 << 32)
        payload = bytes(pkt.payload)
        if self.eno_flow and offset == 0 and len(payload) >= 8 and view.init_len is None:
            view.init_len = struct.unpack_from("!I", payload, 4)[0]
        init_len = view.init_len if self.eno_flow else 0
        if payload and offset == 0 and self.eno_flow:
            kinds.append("init1" if direction == C2S else "init2")
        if payload and init_len is not None and offset + len(payload) > init_len and offset < (1 << 31):
            kinds.append("data")
        if flags & FIN:
            kinds.append("fin")
        return kinds

    def _targeted_drop(self, direction: str, kind: str, seen: int) -> bool:
        return any(
            t.direction == direction and t.kind == kind and t.nth <= seen < t.nth + t.count
            for t in self.targeted
        )

    # ------------------------------------------------------------------ resegmentation
    def _split(self, pkt: TCPPacket) -> list[bytes]:
        """Cut the payload at 1-2 random offsets; FIN and PSH stay on the last piece."""
        payload = bytes(pkt.payload)
        cuts = sorted(self.rng.sample(range(1, len(payload)), min(len(payload) - 1, self.rng.randint(1, 2))))
        bounds = [0, *cuts, len(payload)]
        pieces = []
        for i in range(len(bounds) - 1):
            last = i == len(bounds) - 2
            flags = pkt.flags if last else pkt.flags & ~(FIN | PSH)
            pieces.append(
                _rebuild(
                    pkt,
                    seq=(pkt.seq + bounds[i]) % (1 << 32),
                    flags=flags,
                    payload=payload[bounds[i] : bounds[i + 1]],
                )
            )
        self.stats.split += 1
        return pieces

    def _coalesce(self, direction: str, pkt: TCPPacket, now: float) -> bool:
        """Merge ``pkt`` into the queued segment of the same direction that it continues."""
        for item in self._queue:
            if item.direction != direction:
                continue
            prev = TCPPacket.parse(item.data)
            if prev.flags & (SYN | RST | FIN) or not prev.payload or (prev.sport, prev.dport) != (pkt.sport, pkt.dport):
                continue
            if (prev.seq + len(prev.payload)) % (1 << 32) != pkt.seq:
                continue
            merged_payload = bytes(prev.payload) + bytes(pkt.payload)
            # The later header wins; if only the earlier one had URG, its mark is kept.
            base = pkt if pkt.flags & URG or not prev.flags & URG else prev
            merged = _rebuild(base, seq=prev.seq, flags=base.flags | (pkt.flags & PSH), payload=merged_payload)
            if len(merged) > self.mtu:
                return False
            item.data = merged
            item.arrival = max(item.arrival, now + self.impairments.latency)
            heapq.heapify(self._queue)
            self.stats.coalesced += 1
            return True
        return False

    def _flip_byte(self, pkt: TCPPacket, first: int, end: int) -> bytes:
        """Flip a bit of a payload byte in ``[first, end)`` (a frame byte flip starts past the
        Init message: an Init byte already received intact elsewhere is rightly ignored)."""
        payload = bytearray(pkt.payload)
        picker = random.Random(self.flip.position_seed if self.flip else 0)
        index = picker.randrange(first, end)
        bit = picker.randrange(8)
        payload[index] ^= 1 << bit
        self.stats.flips.append(f"seq={pkt.seq} byte {index} bit {bit}")
        return _rebuild(pkt, payload=bytes(payload))

    def _schedule(self, direction: str, data: bytes, now: float) -> None:
        imp = self.impairments
        delay = imp.latency + (self.rng.random() * imp.jitter if imp.jitter else 0.0)
        self._order += 1
        heapq.heappush(self._queue, _InFlight(now + delay, self._order, direction, data))


def _rebuild(
    pkt: TCPPacket,
    *,
    seq: int | None = None,
    flags: int | None = None,
    payload: bytes | None = None,
    options_raw: bytes | None = None,
) -> bytes:
    """A copy of ``pkt`` with some fields replaced; lengths and checksums recomputed.

    A new ``seq`` moves the urgent pointer with it so it still marks the same stream byte; a
    piece that starts at or after that byte loses URG (as TSO segmentation does)."""
    new_seq = pkt.seq if seq is None else seq
    new_flags = pkt.flags if flags is None else flags
    urg_ptr = 0
    if new_flags & URG:
        urg_ptr = pkt.urg_ptr - seq_diff(new_seq, pkt.seq)
        if not 0 < urg_ptr <= 0xFFFF:
            new_flags &= ~URG
            urg_ptr = 0
    return tcp.build(
        pkt.version,
        pkt.src,
        pkt.dst,
        pkt.sport,
        pkt.dport,
        new_seq,
        pkt.ack,
        new_flags,
        pkt.window,
        options=pkt.options if options_raw is None else options_raw,
        payload=bytes(pkt.payload) if payload is None else payload,
        ttl=pkt.ttl,
        df=pkt.df,
        urg_ptr=urg_ptr,
    )
