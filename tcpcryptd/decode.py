"""``tcpcryptd decode``: decrypt the tcpcrypt connections of a capture with a key log.

Reads a pcap or pcapng file (scapy does the file I/O), finds the TCP-ENO connections (ENO
option, kind 69, in both the SYN and the SYN-ACK, the SYN-ACK's naming a TEP; RFC 8547
§4.1, §4.6), reassembles each direction's wire stream from its ISN, strips the Init1/Init2
message at the start of each direction (RFC 8548 §3.3, §4.1; absent on resumed sessions,
§3.5), then verifies and decrypts every frame (§4.2) with the keys of the key log (format
version 2, docs/daemon.md), following the generation through rekey frames (§3.8).

The wire stream of a direction is counted from the first byte after the SYN, Init message
included, which is also the frame ID offset of each frame (§4.2.3); the application's
bytes ("local" stream) are the frames' data in order, and a TCP segment of the rewritten
capture carries them in the application's own sequence space (ISN + 1 + local offset).

Not for the daemon's hot path: this is an offline tool.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpcryptd.core.aead import AEAD_ALGORITHMS, AEADAlgorithm, TrafficKey
from tcpcryptd.core.constants import ENO_KIND, INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.core.eno import parse_syn_option
from tcpcryptd.core.errors import ENOParseError, FrameAuthError, FrameError, InitMessageError
from tcpcryptd.core.frame import CONTROL_REKEY, HEADER_LEN, MIN_CLEN, decode_frame
from tcpcryptd.core.messages import message_length
from tcpcryptd.daemon.config import TEP_NAMES
from tcpcryptd.daemon.keylog import LABEL

MASK32 = 0xFFFFFFFF
#: Largest TCP payload of one rewritten segment (the plaintext of a 64 KiB frame is split).
WRITE_CHUNK = 16384
_AEADS_BY_NAME = {alg.name.upper(): alg for alg in AEAD_ALGORITHMS.values()}
_FIN, _SYN, _PSH, _ACK, _URG = 0x01, 0x02, 0x08, 0x10, 0x20


class DecodeError(Exception):
    """A key log or capture that cannot be read; the message says why (no traceback)."""


# --------------------------------------------------------------------------------------------
# Key log


@dataclass
class SessionKeys:
    """What the key log says about one session (RFC 8548 §3.3-§3.8)."""

    session_id: bytes
    endpoints: frozenset[str]
    host_a: str = ""                       #: endpoint of host A (sends with k_ab)
    aead: AEADAlgorithm | None = None
    tep: int = 0
    resumed: bool = False
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)   #: j -> k_ab, k_ba


def canonical_endpoint(text: str) -> str:
    """``10.0.0.1:80`` / ``[fd00::1]:80`` with the address in canonical text (RFC 5952)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        raise ValueError(f"{text!r} is not ADDR:PORT")
    address = ipaddress.ip_address(host.strip("[]"))
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def load_keylog(path: Path) -> dict[bytes, SessionKeys]:
    """Sessions of a key log (version 2 lines; comments, blank and other lines skipped)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{path}: cannot read the key log: {exc}") from None
    sessions: dict[bytes, SessionKeys] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != LABEL:
            continue
        try:
            _label, local, remote, role, tep, aead, sid, gen, k_ab, k_ba, marker = fields
            local, remote = canonical_endpoint(local), canonical_endpoint(remote)
            session_id, generation = bytes.fromhex(sid), int(gen)
            keys = bytes.fromhex(k_ab), bytes.fromhex(k_ba)
            if len(session_id) != 33 or generation < 0 or role not in ("A", "B", "-"):
                raise ValueError("bad session ID, generation or role")
            session = sessions.setdefault(session_id, SessionKeys(
                session_id, frozenset((local, remote))))
            if role != "-":
                algorithm = _AEADS_BY_NAME.get(aead.upper())
                if algorithm is None:
                    raise ValueError(f"unknown AEAD {aead}")
                session.host_a = local if role == "A" else remote
                session.aead, session.tep = algorithm, int(tep, 16)
                session.resumed = marker == "resumed"
            session.keys[generation] = keys
        except ValueError as exc:
            raise DecodeError(f"{path}:{number}: not a valid {LABEL} line ({exc})") from None
    for session in sessions.values():
        if session.aead is None:
            raise DecodeError(f"{path}: session {session.session_id.hex()} has no line with "
                              f"its role and AEAD (generation 0)")
        for material in session.keys.values():
            if any(len(k) != session.aead.traffic_key_len for k in material):
                raise DecodeError(f"{path}: session {session.session_id.hex()}: keys are not "
                                  f"{session.aead.traffic_key_len} bytes ({session.aead.name})")
    return sessions


# --------------------------------------------------------------------------------------------
# Capture


@dataclass
class Segment:
    sender: str           #: endpoint text of the sender
    seq: int
    ack: int
    flags: int
    payload: bytes
    offset: int = 0       #: wire offset of seq in the sender's stream (unwrapped)
    ack_offset: int = 0   #: wire offset ack acknowledges in the receiver's stream


@dataclass
class Direction:
    """One direction of a connection: its wire stream and what decoding found in it."""

    sender: str
    receiver: str
    isn: int | None = None
    highest: int = 0      #: highest wire offset met so far (the unwrapping reference)
    segments: list[tuple[int, bytes]] = field(default_factory=list)   #: (wire offset, bytes)
    fin_offset: int | None = None
    role: str = ""
    init_bytes: int = 0
    frames_verified: int = 0
    frames_failed: int = 0
    plaintext: bytearray = field(default_factory=bytearray)
    finp: bool = False
    urgent: list[int] = field(default_factory=list)   #: local index of each last urgent byte
    rekeys: int = 0
    problems: list[str] = field(default_factory=list)
    #: verified frames: (wire end, local start, local end), in wire order
    frames: list[tuple[int, int, int]] = field(default_factory=list)

    def offset(self, seq: int) -> int:
        """Wire offset of ``seq`` (seq - ISN - 1), unwrapped near the highest offset seen
        so far (streams beyond 4 GiB wrap the 32-bit numbers)."""
        assert self.isn is not None
        delta = (seq - self.isn - 1 - self.highest) & MASK32
        offset = self.highest + (delta - (1 << 32) if delta >= 1 << 31 else delta)
        self.highest = max(self.highest, offset)
        return offset

    def stream(self) -> tuple[bytes, int | None]:
        """The contiguous wire stream from offset 0, and where a capture hole stops it."""
        out = bytearray()
        for start, data in sorted(self.segments, key=lambda s: s[0]):
            end = start + len(data)
            if start > len(out):
                return bytes(out), len(out)
            if end > len(out):
                out += data[len(out) - start:]
        return bytes(out), None

    def local_ack(self, wire_ack: int) -> int:
        """Local offset acknowledged by a wire ACK at ``wire_ack`` (whole frames only)."""
        ends = [end for end, _, _ in self.frames]
        i = bisect.bisect_right(ends, wire_ack)
        local = self.frames[i - 1][2] if i else 0
        if self.fin_offset is not None and wire_ack > self.fin_offset:
            local += 1
        return local

    def json(self) -> dict[str, Any]:
        return {"from": self.sender, "to": self.receiver, "role": self.role,
                "init_bytes": self.init_bytes, "frames_verified": self.frames_verified,
                "frames_failed": self.frames_failed, "rekeys": self.rekeys,
                "plaintext_bytes": len(self.plaintext),
                "sha256": hashlib.sha256(self.plaintext).hexdigest(),
                "finp": self.finp, "fin": self.fin_offset is not None,
                "urgent": self.urgent, "problems": self.problems}


@dataclass
class Connection:
    client: str
    server: str
    eno_syn: bool = False
    eno_synack: bool = False
    synack_teps: tuple[int, ...] = ()
    packets: list[int] = field(default_factory=list)
    directions: dict[str, Direction] = field(default_factory=dict)
    session: SessionKeys | None = None
    status: str = "plain"

    @property
    def eno(self) -> bool:
        """Both SYNs carry ENO and B's names a TEP: encryption can be on (RFC 8547 §4.6;
        a vacuous SYN-ACK option leaves the connection plain)."""
        return self.eno_syn and self.eno_synack and bool(self.synack_teps)

    def json(self) -> dict[str, Any]:
        session = self.session
        return {
            "client": self.client, "server": self.server, "status": self.status,
            "tep": _tep_name(session.tep) if session else "",
            "aead": session.aead.name if session and session.aead else "",
            "session_id": session.session_id.hex() if session else "",
            "resumed": bool(session and session.resumed),
            "host_a": session.host_a if session else "",
            "directions": [d.json() for d in self.directions.values()],
        }


#: TEP names as the configuration and ``tcpcryptd status`` write them (RFC 8548 §7)
_TEP_DISPLAY = {int(tep): name for name, tep in TEP_NAMES.items()}


def _tep_name(tep: int) -> str:
    return _TEP_DISPLAY.get(tep & 0x7F, f"0x{tep & 0x7F:02x}")


def _scapy() -> Any:
    try:
        import scapy.all   # noqa: F401  (registers every layer the reader may meet)
        from scapy.error import Scapy_Exception
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        from scapy.packet import Raw
        from scapy.utils import PcapReader, wrpcap
    except ImportError:
        raise DecodeError("tcpcryptd decode needs scapy: pip install 'tcpcryptd[decode]' "
                          "(`make setup` installs it)") from None
    return IP, IPv6, TCP, Raw, PcapReader, wrpcap, Scapy_Exception


def _endpoint(host: str, port: int) -> str:
    address = ipaddress.ip_address(host)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def read_capture(path: Path) -> tuple[list[Any], list[Connection], dict[int, Segment]]:
    """Every packet, the TCP connections whose SYN is in the capture, and their segments."""
    IP, IPv6, TCP, _Raw, PcapReader, _wrpcap, Scapy_Exception = _scapy()
    try:
        with PcapReader(str(path)) as reader:
            packets = list(reader)
    except (OSError, Scapy_Exception, EOFError, ValueError, TypeError) as exc:
        raise DecodeError(f"{path}: not a readable pcap/pcapng capture: {exc}") from None
    except Exception as exc:   # scapy's parsers raise assorted errors on corrupt files
        raise DecodeError(f"{path}: corrupted capture ({type(exc).__name__}: {exc})") from None
    current: dict[frozenset[str], Connection] = {}
    connections: list[Connection] = []
    segments: dict[int, Segment] = {}
    for index, packet in enumerate(packets):
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        tcp = packet.getlayer(TCP)
        if ip is None or tcp is None:
            continue
        src, dst = _endpoint(ip.src, tcp.sport), _endpoint(ip.dst, tcp.dport)
        flags = int(tcp.flags)
        options = tcp.options if isinstance(tcp.options, list) else []
        eno = [opt for opt in options if opt and opt[0] == ENO_KIND]
        pair = frozenset((src, dst))
        conn = current.get(pair)
        if flags & _SYN and not flags & _ACK:
            if conn is None or conn.directions[src].isn not in (None, tcp.seq):
                conn = Connection(src, dst)
                conn.directions = {src: Direction(src, dst), dst: Direction(dst, src)}
                current[pair] = conn
                connections.append(conn)
            conn.directions[src].isn = tcp.seq
            conn.eno_syn = bool(eno)
        elif conn is None:
            continue   # the capture began after this connection's SYN: no sequence origin
        elif flags & _SYN:
            conn.directions[src].isn = tcp.seq
            conn.eno_synack = bool(eno)
            if eno:
                raw = bytes(eno[0][1])
                try:
                    conn.synack_teps = parse_syn_option(bytes((ENO_KIND, len(raw) + 2)) + raw).teps
                except ENOParseError:
                    conn.synack_teps = ()
        payload = bytes(tcp.payload) if tcp.payload else b""
        if ip.version == 4 and ip.len is not None:   # Ethernet padding is not payload
            payload = payload[:max(0, ip.len - ip.ihl * 4 - tcp.dataofs * 4)]
        conn.packets.append(index)
        segment = segments[index] = Segment(src, tcp.seq, tcp.ack, flags, payload)
        direction = conn.directions[src]
        if direction.isn is None or flags & _SYN:
            continue
        segment.offset = offset = direction.offset(tcp.seq)
        receiver = conn.directions[dst]
        if flags & _ACK and receiver.isn is not None:
            segment.ack_offset = receiver.offset(tcp.ack)
        if payload:
            direction.segments.append((offset, payload))
        if flags & _FIN:
            direction.fin_offset = offset + len(payload)
    return packets, connections, segments


# --------------------------------------------------------------------------------------------
# Decryption


def _decrypt_direction(direction: Direction, session: SessionKeys) -> None:
    """Init message, then every frame: verified, decrypted, counted (RFC 8548 §3.3, §4.2)."""
    assert session.aead is not None
    stream, hole = direction.stream()
    if hole is not None:
        direction.problems.append(f"capture misses wire bytes at offset {hole}: decoded up "
                                  f"to there")
    sender_is_a = direction.sender == session.host_a
    direction.role = "A" if sender_is_a else "B"
    pos = 0
    if not session.resumed:
        magic = INIT1_MAGIC if sender_is_a else INIT2_MAGIC
        try:
            length = message_length(stream, magic, max_len=65535)
        except InitMessageError as exc:
            direction.problems.append(f"no {'Init1' if sender_is_a else 'Init2'}: {exc}")
            return
        if length is None or length > len(stream):
            direction.problems.append("the capture holds no whole Init message")
            return
        direction.init_bytes = pos = length
    generation = 0
    keys: dict[int, TrafficKey] = {}
    while len(stream) - pos >= HEADER_LEN:
        clen = (stream[pos + 1] << 8) | stream[pos + 2]
        if clen < MIN_CLEN:
            direction.problems.append(f"malformed frame at offset {pos} (clen {clen})")
            return
        end = pos + HEADER_LEN + clen
        if end > len(stream):
            break
        if stream[pos] & CONTROL_REKEY:
            generation += 1
            direction.rekeys += 1
        key = keys.get(generation)
        material = session.keys.get(generation)
        if key is None and material is not None:
            key = keys[generation] = TrafficKey(session.aead, material[0 if sender_is_a else 1])
        if key is None:
            direction.frames_failed += 1
            _problem(direction, f"no key for generation {generation}")
        else:
            try:
                frame = decode_frame(key, pos, stream[pos:end], generation=generation)
            except (FrameAuthError, FrameError) as exc:
                direction.frames_failed += 1
                _problem(direction, f"frame at offset {pos} failed: {exc}")
            else:
                local_start = len(direction.plaintext)
                if frame.urgent is not None:
                    direction.urgent.append(local_start + frame.urgent)
                direction.plaintext += frame.data
                direction.frames_verified += 1
                direction.frames.append((end, local_start, len(direction.plaintext)))
                direction.finp = direction.finp or frame.fin
        pos = end
    if pos < len(stream) and hole is None:
        direction.problems.append(f"{len(stream) - pos} wire bytes at the end form no whole "
                                  f"frame")


def _problem(direction: Direction, text: str) -> None:
    if len(direction.problems) < 5:
        direction.problems.append(text)
    elif len(direction.problems) == 5:
        direction.problems.append("(more failures not listed)")


def decode(connections: list[Connection], sessions: dict[bytes, SessionKeys]) -> None:
    """Find each ENO connection's session and decrypt both directions; sets ``status``:
    ``decrypted``, ``failed`` (some frame did not verify), ``undecryptable`` (no key)."""
    by_endpoints: dict[frozenset[str], list[SessionKeys]] = {}
    for session in sessions.values():
        by_endpoints.setdefault(session.endpoints, []).append(session)
    for conn in connections:
        if not conn.eno:
            continue
        candidates = by_endpoints.get(frozenset((conn.client, conn.server)), [])
        best: tuple[int, list[Direction], SessionKeys] | None = None
        for session in candidates:    # one 4-tuple may have carried several sessions
            directions = [Direction(d.sender, d.receiver, d.isn, segments=d.segments,
                                    fin_offset=d.fin_offset)
                          for d in conn.directions.values()]
            for direction in directions:
                _decrypt_direction(direction, session)
            verified = sum(d.frames_verified for d in directions)
            if best is None or verified > best[0]:
                best = (verified, directions, session)
        if best is None or best[0] == 0 and any(d.frames_failed for d in best[1]):
            conn.status = "undecryptable"
            continue
        _, directions, conn.session = best
        conn.directions = {d.sender: d for d in directions}
        bad = any(d.frames_failed or d.problems for d in directions)
        conn.status = "failed" if bad else "decrypted"


# --------------------------------------------------------------------------------------------
# Output


def render(connections: list[Connection]) -> str:
    """The text report: one block per ENO connection."""
    lines = []
    for conn in connections:
        if not conn.eno:
            continue
        head = f"{conn.client} -> {conn.server}: {conn.status}"
        session = conn.session
        if session is not None and session.aead is not None:
            head += (f", TEP {_tep_name(session.tep)}, {session.aead.name}, session "
                     f"{session.session_id.hex()}{' (resumed)' if session.resumed else ''}")
        lines.append(head)
        if session is None:
            teps = ", ".join(_tep_name(t) for t in conn.synack_teps)
            lines.append(f"  ENO chose {teps}; no key in the key log for this connection")
            continue
        for d in conn.directions.values():
            events = []
            if d.finp:
                events.append("FINp")
            if d.fin_offset is not None:
                events.append("FIN")
            events += [f"URG at {u}" for u in d.urgent]
            if d.rekeys:
                events.append(f"{d.rekeys} rekeys")
            lines.append(f"  {d.sender} -> {d.receiver} (role {d.role}): {d.frames_verified} "
                         f"frames verified, {d.frames_failed} failed, {len(d.plaintext)} "
                         f"plaintext bytes, Init {d.init_bytes} bytes"
                         + (f"; {', '.join(events)}" if events else ""))
            lines += [f"    {problem}" for problem in d.problems]
    return "\n".join(lines) + ("\n" if lines else "")


def write_plain(path: Path, packets: list[Any], connections: list[Connection],
                segments: dict[int, Segment]) -> int:
    """Write the capture with each decrypted connection as the plain TCP the applications
    saw; other packets unchanged. Returns the number of packets written."""
    _IP, IPv6, TCP, Raw, _PcapReader, wrpcap, _exc = _scapy()
    rewritten: dict[int, list[Any]] = {}
    for conn in connections:
        if conn.session is None:
            continue
        emitted = {sender: 0 for sender in conn.directions}   # frames already written
        for index in conn.packets:
            seg = segments[index]
            mine = conn.directions[seg.sender]
            other = next(d for d in conn.directions.values() if d is not mine)
            out = []
            base = packets[index]
            if seg.flags & _SYN:
                out.append(_rebuild(base, TCP, IPv6, Raw, seq=seg.seq, ack=seg.ack,
                                    flags=seg.flags, payload=b""))
            else:
                frames = mine.frames
                end = seg.offset + len(seg.payload)
                new = emitted[seg.sender]
                while new < len(frames) and frames[new][0] <= end:
                    new += 1
                start = frames[emitted[seg.sender]][1] if new > emitted[seg.sender] else None
                local_end = frames[new - 1][2] if new else 0
                emitted[seg.sender] = new
                ack = 0
                if seg.flags & _ACK and other.isn is not None:
                    ack = (other.isn + 1 + other.local_ack(seg.ack_offset)) & MASK32
                fin = bool(seg.flags & _FIN) and new == len(frames)
                flags = seg.flags & ~_FIN & ~_URG
                assert mine.isn is not None
                if start is not None:
                    data = bytes(mine.plaintext[start:local_end])
                    chunks = [data[i:i + WRITE_CHUNK] for i in range(0, len(data), WRITE_CHUNK)]
                    for k, chunk in enumerate(chunks):
                        last = k == len(chunks) - 1
                        out.append(_rebuild(base, TCP, IPv6, Raw,
                                            seq=(mine.isn + 1 + start) & MASK32, ack=ack,
                                            flags=flags | (_FIN if fin and last else 0),
                                            payload=chunk))
                        start += len(chunk)
                else:
                    out.append(_rebuild(base, TCP, IPv6, Raw,
                                        seq=(mine.isn + 1 + local_end) & MASK32, ack=ack,
                                        flags=(flags & ~_PSH) | (_FIN if fin else 0),
                                        payload=b""))
            rewritten[index] = out
    result = []
    for index, packet in enumerate(packets):
        result.extend(rewritten.get(index, [packet]))
    try:
        wrpcap(str(path), result)
    except OSError as exc:
        raise DecodeError(f"{path}: cannot write: {exc.strerror}") from None
    return len(result)


def _rebuild(base: Any, TCP: Any, IPv6: Any, Raw: Any, *, seq: int, ack: int, flags: int,
             payload: bytes) -> Any:
    """A copy of ``base`` with new TCP numbers and payload; ENO and SACK options removed
    (ENO is not what the applications saw; SACK blocks count wire bytes)."""
    packet = base.copy()
    tcp = packet[TCP]
    tcp.seq, tcp.ack, tcp.flags = seq, ack, flags
    if isinstance(tcp.options, list):
        tcp.options = [opt for opt in tcp.options
                       if opt and opt[0] not in (ENO_KIND, "SAck")]
    tcp.urgptr = 0
    tcp.remove_payload()
    if payload:
        tcp.add_payload(Raw(payload))
    del tcp.chksum, tcp.dataofs
    ip = tcp.underlayer
    if ip is not None and ip.haslayer(IPv6) and ip.__class__ is IPv6:
        del ip.plen
    elif ip is not None and hasattr(ip, "ihl"):
        del ip.len, ip.chksum
    packet.time = base.time
    packet.wirelen = None     # the original length would be written as the frame's length
    return packet
