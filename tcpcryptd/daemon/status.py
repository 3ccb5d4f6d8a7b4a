"""``tcpcryptd status``: the session objects of the JSON answer and the human-readable table.

A session object (one per flow the engine tracks; plain connections have none)::

    {"local": "10.0.0.1:40000", "remote": "10.0.0.2:80", "state": "encrypted",
     "role": "A", "tep": "X25519", "aead": "AES-128-GCM", "session_id": "23ab...",
     "bytes_out": 1000, "bytes_in": 200, "bytes_out_wire": 1106, "bytes_in_wire": 273,
     "packets_out": 5, "packets_in": 4, "age": 1.52, "abort_reason": ""}

``bytes_out``/``bytes_in`` count application (plaintext) bytes, the ``_wire`` ones what
crossed the network (Init messages and frame overhead included). ``tep``, ``aead`` and
``session_id`` are empty strings until the key exchange has produced them.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from tcpcryptd.engine.flow import FlowStatus

from tcpcryptd.daemon.config import TEP_NAMES

_TEP_DISPLAY = {tep.name: name for name, tep in TEP_NAMES.items()}

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
    }


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


def _cells(session: dict[str, Any]) -> dict[str, str]:
    return {
        **{key: str(session[key]) or "-" for key in ("local", "remote", "state", "role",
                                                      "tep", "aead", "session_id")},
        "traffic": f"{_human_bytes(session['bytes_out'])}/{session['packets_out']}",
        "traffic_in": f"{_human_bytes(session['bytes_in'])}/{session['packets_in']}",
        "age": _age(session["age"]),
    }


def render(status: dict[str, Any]) -> str:
    """The ``tcpcryptd status`` text: daemon line, counters, session table."""
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
        return "\n".join(lines) + "\n"
    rows = [dict((key, title) for key, title in COLUMNS)] + [_cells(s) for s in sessions]
    widths = {key: max(len(row[key]) for row in rows) for key, _ in COLUMNS}
    for row in rows:
        lines.append("  ".join(row[key].ljust(widths[key]) for key, _ in COLUMNS).rstrip())
    return "\n".join(lines) + "\n"

