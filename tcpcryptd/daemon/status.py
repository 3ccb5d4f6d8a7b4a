"""``tcpcryptd status``: the session objects of the JSON answer and the human-readable table.

A session object (one per flow the engine tracks; plain connections have none)::

    {"local": "10.0.0.1:40000", "remote": "10.0.0.2:80", "state": "encrypted",
     "role": "A", "tep": "X25519", "aead": "AES-128-GCM", "session_id": "23ab...",
     "bytes_out": 1000, "bytes_in": 200, "bytes_out_wire": 1106, "bytes_in_wire": 273,
     "packets_out": 5, "packets_in": 4, "age": 1.52, "abort_reason": "", "resumed": false,
     "generation_out": 0, "generation_in": 0}

``bytes_out``/``bytes_in`` count application (plaintext) bytes, the ``_wire`` ones what
crossed the network (Init messages and frame overhead included). ``tep``, ``aead`` and
``session_id`` are empty strings until the key exchange has produced them. ``resumed`` is
true for a session resumed from a cached secret (RFC 8548 §3.5: no Init messages; its
session ID's first byte has the v bit, 0x80); the table shows it after the state
(``encrypted+resumed``). ``generation_out`` / ``generation_in`` are the key generations
(RFC 8548 §3.8) of the latest frame this host sealed and of the peer's latest: 0 until the
first rekey, and the generations the key log's lines for this session go up to.

The text (:func:`render`) is for people: session IDs shortened (:func:`compact_id`), and
above :data:`PEER_SUMMARY_ROWS` sessions one line per peer (:func:`peers`, like ``wg show``)
unless the table is asked for; the JSON keeps every field whole.

A ``status`` request may narrow the answer (:class:`StatusQuery`): ``states``, ``peer``,
``limit``, or ``summary`` (counts instead of rows). Filtering happens before any session
object is built, so rows that are not wanted cost no encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tcpcryptd.engine.flow import FlowStatus, State

from tcpcryptd.daemon.config import AEAD_NAMES, TEP_NAMES
from tcpcryptd.daemon.control import shown
from tcpcryptd.daemon.errors import ControlError

_TEP_DISPLAY = {tep.name: name for name, tep in TEP_NAMES.items()}

#: Session states, in the order of a flow's life.
STATES = tuple(str(state) for state in State)
#: What each state means (``tcpcryptd status``, docs/daemon.md, the man page).
STATE_MEANINGS = {
    "syn-sent": "host A: our SYN carries ENO, no SYN-ACK yet (RFC 8547 §4.6)",
    "syn-received": "host B: the peer's SYN carried ENO, our SYN-ACK answers it",
    "negotiated": "host A: the SYN-ACK agreed on a TEP; our third ACK not yet sent",
    "keying": "encryption is on (RFC 8547 §4.6): Init1/Init2 under way (RFC 8548 §3.3)",
    "encrypted": "session keys exist; every byte travels in frames (RFC 8548 §4.2)",
    "closed": "both FINs or a RST seen; kept a while (linger) for late segments",
    "aborted": "the daemon reset the connection both ways (see abort_reason); lingering",
    "tombstone": "linger over: keys and buffers freed, only the addresses kept so that "
                 "late segments are dropped, never passed in plaintext; forgotten at "
                 "idle_timeout",
}
assert tuple(STATE_MEANINGS) == STATES
#: Above this many rows, ``tcpcryptd status`` prints one line per peer instead (``--all``:
#: the table anyway).
PEER_SUMMARY_ROWS = 20
#: A summary's connection totals and the counter each is read from (0 when absent: a
#: counter appears once it is non-zero).
SUMMARY_COUNTERS = {"encrypted": "encrypted", "plain": "plain", "offloaded": "daemon_offloaded"}

COLUMNS = (("local", "LOCAL"), ("remote", "REMOTE"), ("state", "STATE"), ("role", "ROLE"),
           ("tep", "TEP"), ("aead", "AEAD"), ("session_id", "SESSION ID"),
           ("traffic", "OUT B/PKT"), ("traffic_in", "IN B/PKT"), ("age", "AGE"))


def split_endpoint(text: str) -> tuple[str, int]:
    """``"10.0.0.1:80"`` or ``"[fd00::1]:80"`` -> (compressed address, port)."""
    host, _, port = text.rpartition(":")
    address = ipaddress.ip_address(host.strip("[]"))
    return str(address), int(port)


def join_endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@functools.lru_cache(maxsize=4096)
def _canonical_host(host: str) -> str:
    """An address in its canonical text (RFC 5952 for IPv6); unchanged if not an address."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def _normalize(endpoint: str) -> str:
    """``HOST:PORT`` with HOST canonical; cheap for the engine's (already canonical) text."""
    host, colon, port = endpoint.rpartition(":")
    if not colon:
        return endpoint
    canonical = _canonical_host(host)
    if canonical == host.strip("[]") and (":" in canonical) == host.startswith("["):
        return endpoint
    return join_endpoint(canonical, int(port)) if port.isdigit() else endpoint


def session_json(flow: FlowStatus) -> dict[str, Any]:
    """One engine ``FlowStatus`` as a status session object (schema in the module doc)."""
    return {
        "local": _normalize(flow.local),
        "remote": _normalize(flow.remote),
        "state": flow.state,
        "role": flow.role,
        "tep": _TEP_DISPLAY.get(flow.tep, flow.tep),
        "aead": flow.aead.upper(),
        "session_id": flow.session_id,
        "bytes_out": flow.bytes_out_plain,
        "bytes_in": flow.bytes_in_plain,
        "bytes_out_wire": flow.bytes_out_wire,
        "bytes_in_wire": flow.bytes_in_wire,
        "packets_out": flow.packets_out,
        "packets_in": flow.packets_in,
        "age": round(flow.age, 3),
        "abort_reason": flow.abort_reason,
        "resumed": flow.resumed,
        "generation_out": flow.generation_out,
        "generation_in": flow.generation_in,
    }


#: Session states in which the connection is protected by its tcpcrypt session.
_SESSION_STATES = (str(State.ENCRYPTED), str(State.CLOSED))
#: Session states before the outcome (encrypted or plain) is known.
HANDSHAKE_STATES = tuple(str(state) for state in (State.SYN_SENT, State.SYN_RECEIVED,
                                                   State.NEGOTIATED, State.KEYING))


def _endpoint_fields(request: dict[str, Any], end: str) -> tuple[str, int]:
    address, port = request.get(f"{end}_addr"), request.get(f"{end}_port")
    if not isinstance(address, str) or len(address) > 64:
        raise ControlError(f"{end}_addr must be an IP address string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ControlError(f"{end}_port must be a port number (1..65535)")
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise ControlError(f"{end}_addr: {shown(address)} is not an IP address") from None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped   # a dual-stack socket's view of an IPv4 connection
    return str(parsed), port


def four_tuple(request: dict[str, Any]) -> tuple[tuple[str, int], tuple[str, int]]:
    """``(local, remote)`` (canonical address, port) of a ``session`` request; all four
    fields are required and both addresses must be of one IP version."""
    local, remote = _endpoint_fields(request, "local"), _endpoint_fields(request, "remote")
    if (":" in local[0]) != (":" in remote[0]):
        raise ControlError("local_addr and remote_addr must be of one IP version")
    return local, remote


def tcpinc_json(wanted: tuple[str, str], flow: FlowStatus | None) -> dict[str, Any]:
    """The ``session`` answer for the connection ``wanted`` (``local``, ``remote``), whose
    engine flow is ``flow`` (None: untracked, so plain).

    Field names follow the TCPINC API (draft-ietf-tcpinc-api §2.1, §3.1): ``session_id`` is
    TCP_ENO_SESSID (RFC 8548 §3.4, hex), ``negotiated_tep`` TCP_ENO_NEGTEP (the TEP byte as B
    sent it, v bit included: the session ID's first byte), ``role`` TCP_ENO_ROLE as ``A``/``B``
    (RFC 8547 §4.5), ``aead_id`` TCP_CRYPT_CONF (RFC 8548 §7, Table 5). They are null unless
    ``encrypted``; ``state`` is the status state, or ``plain``.
    """
    state = "plain" if flow is None else flow.state
    encrypted = flow is not None and bool(flow.session_id) and state in _SESSION_STATES
    session_id = flow.session_id if encrypted else ""
    aead = flow.aead.upper() if encrypted else ""
    return {
        "local": wanted[0],
        "remote": wanted[1],
        "state": state,
        "encrypted": encrypted,
        "resumed": encrypted and flow.resumed,
        "session_id": session_id or None,
        "negotiated_tep": int(session_id[:2], 16) if encrypted else None,
        "tep": _TEP_DISPLAY.get(flow.tep, flow.tep) if encrypted else None,
        "aead": aead or None,
        "aead_id": int(AEAD_NAMES[aead]) if aead in AEAD_NAMES else None,
        "role": flow.role if encrypted else None,
    }


def parse_peer(text: str) -> tuple[str, int | None]:
    """``ADDR``, ``ADDR:PORT``, ``[V6ADDR]`` or ``[V6ADDR]:PORT`` -> (canonical address, port).

    A bare IPv6 address is all address (``fd00::1:80`` has no port). ValueError when
    malformed.
    """
    address, port = text, None
    host, colon, tail = text.rpartition(":")
    if colon and tail.isdigit() and (host.startswith("[") or ":" not in host):
        address, port = host, int(tail)
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        canonical = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"{text!r} is not ADDR, ADDR:PORT or [V6ADDR]:PORT") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} of {text!r} is not in 1..65535")
    return canonical, port


@dataclasses.dataclass(frozen=True)
class StatusQuery:
    """What a ``status`` request asks for; the defaults ask for every session row."""

    states: frozenset[str] = frozenset()   #: only sessions in these states (empty: all)
    peer: tuple[str, int | None] | None = None   #: only sessions with this remote end
    summary: bool = False                  #: counts instead of rows
    limit: int | None = None               #: at most this many rows

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> StatusQuery:
        """The query of a ``status`` request; :class:`ControlError` naming a bad field."""
        query = cls(states=_states_field(request.get("states")),
                    peer=_peer_field(request.get("peer")),
                    summary=_summary_field(request.get("summary")),
                    limit=_limit_field(request.get("limit")))
        if query.summary and query.limit is not None:
            raise ControlError("limit applies to session rows: not with summary")
        return query

    def matches(self, flow: FlowStatus) -> bool:
        """Does ``flow`` pass the filters (the engine's text is already canonical)?"""
        if self.states and flow.state not in self.states:
            return False
        if self.peer is None:
            return True
        host, _, port = _normalize(flow.remote).rpartition(":")
        address, wanted_port = self.peer
        return host.strip("[]") == address and (wanted_port is None or int(port) == wanted_port)


def _states_field(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ControlError("states must be a non-empty list of state names")
    unknown = [state for state in value if state not in STATES]
    if unknown:
        raise ControlError(f"unknown state {unknown[0][:40]!r} (known: {', '.join(STATES)})")
    return frozenset(value)


def _peer_field(value: object) -> tuple[str, int | None] | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ControlError("peer must be a string: ADDR, ADDR:PORT or [V6ADDR]:PORT")
    try:
        return parse_peer(value)
    except ValueError as exc:
        raise ControlError(f"peer: {exc}") from None


def _summary_field(value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ControlError("summary must be true or false")
    return value


def _limit_field(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ControlError("limit must be a non-negative integer")
    return value


def select(flows: Iterable[FlowStatus], query: StatusQuery,
           counters: dict[str, int]) -> dict[str, Any]:
    """The part of a status answer after ``daemon`` and ``counters``, for ``query``.

    Rows: ``matched`` (sessions matching the filters) and ``sessions`` (at most ``limit``
    of them). Summary: ``summary`` with ``sessions`` (matched), ``states`` (count per
    state, in :data:`STATES` order, non-zero ones) and ``connections`` (the
    :data:`SUMMARY_COUNTERS`).
    """
    matching = [flow for flow in flows if query.matches(flow)]
    if query.summary:
        per_state = Counter(flow.state for flow in matching)
        return {"summary": {
            "sessions": len(matching),
            "states": {state: per_state[state] for state in STATES if per_state[state]},
            "connections": {name: counters.get(counter, 0)
                            for name, counter in SUMMARY_COUNTERS.items()},
        }}
    rows = matching if query.limit is None else matching[:query.limit]
    return {"matched": len(matching), "sessions": [session_json(flow) for flow in rows]}


def matches(session: dict[str, Any], remote_addr: str | None, remote_port: int | None,
            local_port: int | None) -> bool:
    """Does a session object match a ``session-id`` query (each given part must match)?"""
    remote = split_endpoint(session["remote"])
    if remote_addr is not None:
        try:
            wanted = str(ipaddress.ip_address(remote_addr))
        except ValueError:
            return False
        if remote[0] != wanted:
            return False
    if remote_port is not None and remote[1] != remote_port:
        return False
    return local_port is None or split_endpoint(session["local"])[1] == local_port


def _human_bytes(count: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if count < 1024 or unit == "G":
            return f"{count}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def compact_id(session_id: str) -> str:
    """A session ID for people: the first 8 and last 4 hex digits (``23c5a1f0...9f19``);
    the full one is in ``--json`` and ``tcpcryptd session-id``."""
    return f"{session_id[:8]}...{session_id[-4:]}" if len(session_id) > 15 else session_id


def _cells(session: dict[str, Any]) -> dict[str, str]:
    return {
        **{key: str(session[key]) or "-" for key in ("local", "remote", "state", "role",
                                                      "tep", "aead")},
        "state": session["state"] + ("+resumed" if session["resumed"] else ""),
        "session_id": compact_id(session["session_id"]) or "-",
        "traffic": f"{_human_bytes(session['bytes_out'])}/{session['packets_out']}",
        "traffic_in": f"{_human_bytes(session['bytes_in'])}/{session['packets_in']}",
        "age": _age(session["age"]),
    }


PEER_COLUMNS = (("peer", "PEER"), ("connections", "CONNECTIONS"), ("encrypted", "ENCRYPTED"),
                ("out", "OUT"), ("in", "IN"), ("handshake", "LATEST HANDSHAKE"))


def peers(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per remote address (like ``wg show``): connections, encrypted ones,
    application bytes each way, age of the newest session (None: none has keys yet);
    the most recent handshake first."""
    by_peer: dict[str, dict[str, Any]] = {}
    for session in sessions:
        address = split_endpoint(session["remote"])[0]
        peer = by_peer.setdefault(address, {"peer": address, "connections": 0, "encrypted": 0,
                                            "out": 0, "in": 0, "handshake": None})
        peer["connections"] += 1
        peer["encrypted"] += session["state"] == "encrypted"
        peer["out"] += session["bytes_out"]
        peer["in"] += session["bytes_in"]
        if session["session_id"] and (peer["handshake"] is None
                                      or session["age"] < peer["handshake"]):
            peer["handshake"] = session["age"]
    return sorted(by_peer.values(), key=lambda p: (p["handshake"] is None,
                                                   p["handshake"] or 0.0, p["peer"]))


def _table(columns: tuple[tuple[str, str], ...], cells: list[dict[str, str]]) -> list[str]:
    rows = [dict(columns)] + cells
    widths = {key: max(len(row[key]) for row in rows) for key, _ in columns}
    return ["  ".join(row[key].ljust(widths[key]) for key, _ in columns).rstrip()
            for row in rows]


def render(status: dict[str, Any], full: bool = False) -> str:
    """The ``tcpcryptd status`` text: daemon line, counters, then the session table, or
    with more than :data:`PEER_SUMMARY_ROWS` sessions (and not ``full``) one line per peer."""
    daemon = status["daemon"]
    lines = [
        f"tcpcryptd {daemon['version']} (pid {daemon['pid']}): encryption of new "
        f"connections {'enabled' if daemon['enabled'] else 'disabled'}; queue "
        f"{daemon['queue']}, {daemon['firewall']} rules, up {_age(daemon['uptime'])}, "
        f"{daemon['held_packets']} held packets",
    ]
    counters = status["counters"]
    if counters:
        lines.append("counters: " + ", ".join(f"{name}={value}"
                                              for name, value in sorted(counters.items())))
    sessions = status["sessions"]
    if not sessions:
        lines.append("no sessions")
    elif full or len(sessions) <= PEER_SUMMARY_ROWS:
        lines += _table(COLUMNS, [_cells(s) for s in sessions])
    else:
        summary = peers(sessions)
        lines += _table(PEER_COLUMNS, [
            {"peer": p["peer"], "connections": str(p["connections"]),
             "encrypted": str(p["encrypted"]), "out": _human_bytes(p["out"]),
             "in": _human_bytes(p["in"]),
             "handshake": "-" if p["handshake"] is None else f"{_age(p['handshake'])} ago"}
            for p in summary])
        lines.append(f"{len(sessions)} sessions with {len(summary)} peer"
                     f"{'' if len(summary) == 1 else 's'}; "
                     f"`tcpcryptd status --all` lists every session")
    matched = status.get("matched", len(sessions))   # absent from a daemon before filters
    if matched > len(sessions):
        lines.append(f"{len(sessions)} of {matched} matching sessions shown")
    return "\n".join(lines) + "\n"


def render_summary(summary: dict[str, Any]) -> str:
    """The ``tcpcryptd status --summary`` line (no newline), e.g. ``20000 sessions
    (syn-sent 18000, encrypted 2000); connections: encrypted 2000, plain 12, offloaded 0``."""
    states = ", ".join(f"{state} {count}" for state, count in summary["states"].items())
    totals = ", ".join(f"{name} {count}" for name, count in summary["connections"].items())
    return (f"{summary['sessions']} sessions" + (f" ({states})" if states else "")
            + f"; connections: {totals}")

