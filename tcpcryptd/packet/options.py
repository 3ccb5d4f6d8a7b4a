"""TCP options: parse, read and edit the raw option bytes of a TCP header.

Layout (RFC 9293 §3.1): kind 0 (EOL) ends the list and everything after it is padding;
kind 1 (NOP) is one byte, used to align the next option; every other option is
``kind | length | data`` with ``length`` counting all of it. Kinds: MSS 2 (RFC 9293 §3.7.1),
window scale 3 and timestamps 8 (RFC 7323), SACK-permitted 4 and SACK 5 (RFC 2018), TFO 34
(RFC 7413), ENO 69 (RFC 8547 §4.1). Unknown kinds are kept as they are.

Errors, both subclasses of :class:`~tcpcryptd.packet.tcp.PacketError`:

* :class:`OptionError`: the option list itself is malformed (a length byte missing, below 2
  or running past the end). Every function here raises it for such input, and nothing else.
* :class:`OptionSpaceError`: an edit does not fit in the 40 bytes a TCP header allows.

A known kind with a wrong length (an MSS option of 3 bytes, a SACK option of 12) is not an
:class:`OptionError`: the getters skip it, as Linux's ``tcp_parse_options`` does, and the
editors leave it alone, except :func:`replace_sack` and :func:`remove`, which drop it with
the rest of its kind. Of several well-formed options of one kind the getters report the
last, again as Linux does (each occurrence overwrites the previous one); :func:`set_mss` and
:func:`set_timestamps` edit all of them, so no copy escapes the edit.

Edits return new bytes padded with EOL (zero) bytes to a multiple of 4 (RFC 9293 §3.1), the
options ahead of the edit point untouched, so the alignment the sender chose stays.
NOP bytes right before an option are its alignment padding and go with it when it is removed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tcpcryptd.core.constants import ENO_KIND
from tcpcryptd.packet.checksum import Buffer
from tcpcryptd.packet.tcp import PacketError

__all__ = [
    "EOL",
    "NOP",
    "MSS",
    "WS",
    "SACK_PERM",
    "SACK",
    "TS",
    "TFO",
    "ENO",
    "MAX_OPTIONS_LEN",
    "OptionError",
    "OptionSpaceError",
    "parse",
    "mss",
    "get_mss",
    "wscale",
    "sack_permitted",
    "sack_blocks",
    "timestamps",
    "tfo",
    "eno_options",
    "add",
    "remove",
    "set_mss",
    "replace_sack",
    "set_timestamps",
]

EOL = 0
NOP = 1
MSS = 2
WS = 3
SACK_PERM = 4
SACK = 5
TS = 8
TFO = 34
ENO = ENO_KIND

#: Room for options in a TCP header: data offset 15 words minus the 5 of the fixed header.
MAX_OPTIONS_LEN = 40

_TS_OPTION = struct.Struct("!BBII")
_SACK_BLOCK = struct.Struct("!II")
_U16 = struct.Struct("!H")
_SACK_BLOCK_LEN = 8
# Kinds whose data are 32-bit numbers: added at an offset of 2 mod 4, so the numbers are
# 32-bit aligned (the layout of RFC 7323 Appendix A and RFC 2018 §3).
_WORD_ALIGNED_KINDS = frozenset((TS, SACK))
#: The kinds the getters read, each with the lengths its RFC allows (a known kind with
#: another length is skipped, see the module docstring): MSS (RFC 9293 §3.7.1), window scale and
#: timestamps (RFC 7323 §2.2, §3.2), SACK-permitted and SACK with 1 to 4 blocks (RFC 2018
#: §2, §3), TFO: a cookie request or a 4..16-byte cookie (RFC 7413 §4.1.1).
_WELL_FORMED: dict[int, frozenset[int]] = {
    MSS: frozenset((4,)),
    WS: frozenset((3,)),
    SACK_PERM: frozenset((2,)),
    TS: frozenset((10,)),
    SACK: frozenset(2 + _SACK_BLOCK_LEN * blocks for blocks in range(1, 5)),
    TFO: frozenset((2, *range(6, 19))),
}


class OptionError(PacketError):
    """A malformed TCP option list: a length byte missing, below 2 or past the end."""


class OptionSpaceError(PacketError):
    """An edited option list would exceed the 40 bytes of a TCP header."""


#: One walk of an option list: ``[(kind, group_start, start, end)]`` of every option, the end
#: of the content, and ``{kind: [(start, end)]}`` of the well-formed ones the getters read.
_Scan = tuple[list[tuple[int, int, int, int]], int, dict[int, list[tuple[int, int]]]]

#: Walks of recent option lists, by their bytes: the engine reads several options of one
#: packet (MSS, window scale, SACK-permitted, timestamps of a SYN) and edits them, so each
#: list is walked once (docs/ARCHITECTURE.md "Hot path"). Emptied when full; a malformed
#: list is never stored, so it raises again on every call.
_SCANS: dict[bytes, _Scan] = {}
_SCANS_MAX = 64


def _scan(raw: Buffer) -> _Scan:
    """Locate the options, checking the whole list (OptionError if malformed).

    ``group_start`` includes the NOPs right before the option; the content ends after the
    last option (trailing NOPs, an EOL and what follows it are padding). The result is
    shared (cached for ``bytes``): callers never mutate it.
    """
    cacheable = type(raw) is bytes
    if cacheable:
        scanned = _SCANS.get(raw)  # type: ignore[call-overload]
        if scanned is not None:
            return scanned
    items: list[tuple[int, int, int, int]] = []
    found: dict[int, list[tuple[int, int]]] = {}
    well_formed = _WELL_FORMED
    n = len(raw)
    i = 0
    group_start = 0
    content_end = 0
    while i < n:
        kind = raw[i]
        if kind == EOL:
            break
        if kind == NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise OptionError(f"option kind {kind} without a length byte")
        length = raw[i + 1]
        if length < 2 or i + length > n:
            raise OptionError(f"option kind {kind} with bad length {length}")
        end = i + length
        items.append((kind, group_start, i, end))
        if length in well_formed.get(kind, ()):
            found.setdefault(kind, []).append((i, end))
        i = group_start = content_end = end
    scanned = (items, content_end, found)
    if cacheable:
        if len(_SCANS) >= _SCANS_MAX:
            _SCANS.clear()
        _SCANS[raw] = scanned  # type: ignore[index]
    return scanned


def parse(raw: Buffer) -> list[tuple[int, bytes]]:
    """The options in order as ``(kind, data)``, NOP and EOL left out; OptionError if malformed.

    ``data`` excludes the kind and length bytes.
    """
    return [(kind, bytes(raw[start + 2 : end])) for kind, _, start, end in _scan(raw)[0]]


_NONE_FOUND: list[tuple[int, int]] = []


def _find(raw: Buffer, kind: int) -> list[tuple[int, int]]:
    """(start, end) of every well-formed option of ``kind``, in order (shared: not mutated).

    The whole list is checked (OptionError if malformed).
    """
    return _scan(raw)[2].get(kind, _NONE_FOUND)


def mss(raw: Buffer) -> int | None:
    """The maximum segment size (RFC 9293 §3.7.1), None if absent."""
    found = _find(raw, MSS)
    return _U16.unpack_from(raw, found[-1][0] + 2)[0] if found else None


#: The name the architecture contract (docs/ARCHITECTURE.md, layer 2) uses for :func:`mss`.
get_mss = mss


def wscale(raw: Buffer) -> int | None:
    """The window scale shift count as sent (RFC 7323 §2.2; the receiver caps it at 14)."""
    found = _find(raw, WS)
    return raw[found[-1][0] + 2] if found else None


def sack_permitted(raw: Buffer) -> bool:
    """Whether the SACK-permitted option is present (RFC 2018 §2)."""
    return bool(_find(raw, SACK_PERM))


def sack_blocks(raw: Buffer) -> list[tuple[int, int]]:
    """The SACK blocks ``(left edge, right edge)`` of the SACK option (RFC 2018 §3)."""
    found = _find(raw, SACK)
    if not found:
        return []
    start, end = found[-1]
    return [_SACK_BLOCK.unpack_from(raw, i) for i in range(start + 2, end, _SACK_BLOCK_LEN)]


def timestamps(raw: Buffer) -> tuple[int, int] | None:
    """``(TSval, TSecr)`` of the timestamps option (RFC 7323 §3.2), None if absent."""
    found = _find(raw, TS)
    if not found:
        return None
    _, _, tsval, tsecr = _TS_OPTION.unpack_from(raw, found[-1][0])
    return tsval, tsecr


def tfo(raw: Buffer) -> bytes | None:
    """The TCP Fast Open cookie (RFC 7413 §4.1.1): b"" for a cookie request, None if absent."""
    found = _find(raw, TFO)
    return bytes(raw[found[-1][0] + 2 : found[-1][1]]) if found else None


def eno_options(raw: Buffer) -> list[bytes]:
    """Every ENO option (kind 69) whole, kind and length bytes included, in order.

    All of them, because a SYN with more than one ENO option disables ENO (RFC 8547 §4.1);
    each is the exact bytes the transcript needs (RFC 8547 §4.8).
    """
    return [bytes(raw[start:end]) for kind, _, start, end in _scan(raw)[0] if kind == ENO]


def _pad(content: bytes) -> bytes:
    """``content`` padded with EOL bytes to a multiple of 4; OptionSpaceError past 40."""
    if len(content) > MAX_OPTIONS_LEN:
        raise OptionSpaceError(f"{len(content)} bytes of TCP options do not fit in 40")
    return content + bytes(-len(content) % 4)


def _append(content: bytes, option: bytes) -> bytes:
    """``option`` after ``content``, NOP-aligned when its data are 32-bit words.

    The NOPs never cost room: such options have a length of 2 mod 4, so the aligned list
    ends on a multiple of 4, the length padding would round the unaligned one up to anyway.
    """
    if option[0] in _WORD_ALIGNED_KINDS:
        return content + b"\x01" * ((2 - len(content)) % 4) + option
    return content + option


def room(raw: Buffer) -> int:
    """Bytes left for an option :func:`add` appends that needs no alignment (such as ENO):
    40 minus the options' content (padding does not count); OptionError if malformed."""
    return MAX_OPTIONS_LEN - _scan(raw)[1]


def add(raw: Buffer, option: bytes) -> bytes:
    """``raw`` with ``option`` (one whole option, kind and length bytes included) appended.

    The new option goes after the last existing one, so existing options keep their
    positions; timestamps and SACK options get NOPs ahead of them to align their numbers.
    Options of the same kind already present stay (remove them first if needed).
    ValueError if ``option`` is not a single option; OptionSpaceError if it does not fit.
    """
    if len(option) < 2 or option[0] in (EOL, NOP) or option[1] != len(option):
        raise ValueError("not a single TCP option with a matching length byte")
    content_end = _scan(raw)[1]
    return _pad(_append(bytes(raw[:content_end]), option))


def _without(raw: Buffer, kind: int) -> bytes:
    """The option content of ``raw`` (no trailing padding) without any option of ``kind``."""
    return b"".join(bytes(raw[group_start:end])
                    for k, group_start, _, end in _scan(raw)[0] if k != kind)


def remove(raw: Buffer, kind: int) -> bytes:
    """``raw`` without any option of ``kind`` (and the NOPs that aligned them), re-padded."""
    return _pad(_without(raw, kind))


def set_mss(raw: Buffer, mss_limit: int) -> bytes:
    """``raw`` with its MSS lowered to ``mss_limit`` if it is above it; never raised.

    The clamp of docs/ARCHITECTURE.md "Packets the engine builds", so that segments plus
    frame overhead fit the path. Every MSS option is clamped, since a stack may read any of them. Without one the peer assumes
    536 (IPv4) or 1220 (IPv6) bytes (RFC 9293 §3.7.1), which a sane clamp does not undercut,
    so nothing is added; the length never changes.
    """
    edited = bytearray(raw)
    for start, _ in _find(raw, MSS):
        if _U16.unpack_from(raw, start + 2)[0] > mss_limit:
            _U16.pack_into(edited, start + 2, mss_limit)
    return bytes(edited)


def replace_sack(raw: Buffer, blocks: Sequence[tuple[int, int]]) -> bytes:
    """``raw`` with its SACK option(s) replaced by one carrying ``blocks`` (RFC 2018 §3).

    The caller passes the blocks it could translate, most recent first; an empty list
    removes the option. Blocks that do not fit in the option space are dropped from the end:
    RFC 2018 §4 has the first block report the most recent segment and lets a receiver send
    fewer blocks than it holds. So this never raises OptionSpaceError.
    """
    items = _scan(raw)[0]
    sacks = [(start, end) for kind, _, start, end in items if kind == SACK]
    if len(sacks) == 1 and sacks[0][1] - sacks[0][0] == 2 + len(blocks) * _SACK_BLOCK_LEN:
        # The common case of ACK translation: every block mapped, rewrite in place.
        edited = bytearray(raw)
        for i, (left, right) in enumerate(blocks):
            _SACK_BLOCK.pack_into(edited, sacks[0][0] + 2 + i * _SACK_BLOCK_LEN, left, right)
        return bytes(edited)
    content = b"".join(
        bytes(raw[group_start:end]) for kind, group_start, _, end in items if kind != SACK
    )
    room = MAX_OPTIONS_LEN - len(content) - 2
    count = min(len(blocks), 4, max(room, 0) // _SACK_BLOCK_LEN)
    if count == 0:
        return _pad(content)
    option = bytes((SACK, 2 + count * _SACK_BLOCK_LEN)) + b"".join(
        _SACK_BLOCK.pack(left, right) for left, right in blocks[:count]
    )
    return _pad(_append(content, option))


def set_timestamps(raw: Buffer, tsval: int, tsecr: int) -> bytes:
    """``raw`` with the timestamps option (RFC 7323 §3.2) set to ``(tsval, tsecr)``.

    Existing options are rewritten in place (all of them, should there be several);
    otherwise one is appended (NOP-aligned), which may raise OptionSpaceError.
    """
    found = _find(raw, TS)
    if not found:
        return add(raw, _TS_OPTION.pack(TS, 10, tsval, tsecr))
    edited = bytearray(raw)
    for start, _ in found:
        _TS_OPTION.pack_into(edited, start, TS, 10, tsval, tsecr)
    return bytes(edited)
