"""TCP-ENO option codec (RFC 8547 §4.1-4.4) and tcpcrypt resumption suboptions (RFC 8548 §3.5).

Pure functions over bytes, no state. Two forms of the option (kind 69) exist:

* the **SYN form** (only in SYN segments): a run of suboptions. Each suboption starts with a
  byte ``v | glt`` (RFC 8547 Fig. 4, Table 1):

  ============  ===  =====================================================================
  byte value    v    meaning
  ============  ===  =====================================================================
  0x00-0x1f     0    global suboption; only the first one in an option counts (§4.2)
  0x20-0x7f     0    TEP identifier without data
  0x80-0x9f     1    length byte ``100nnnnn``: the next suboption is a TEP byte with v=1
                     (>= 0xa0) followed by ``nnnnn + 1`` bytes of data (§4.4)
  0xa0-0xff     1    TEP identifier with data; without a length byte before it the data
                     runs to the end of the option (§4.4)
  ============  ===  =====================================================================

* the **non-SYN form** (segments without SYN): only its presence counts; contents are
  ignored on receipt and tcpcrypt sends it empty (``45 02``, RFC 8547 §4.1).

:func:`parse_syn_option` raises :class:`~tcpcryptd.core.errors.ENOParseError` -- and no other
exception, for any input bytes -- on every malformed case, after which the caller disables
ENO (RFC 8547 §4.4, §4.6). :class:`SynOption` keeps the exact wire bytes, because the
negotiation transcript is made of them (RFC 8547 §4.8).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tcpcryptd.core.constants import (
    ENO_KIND,
    MAX_RESUME_NONCE_LEN,
    NON_SYN_OPTION,
    RESUME_HALF_LEN,
)
from tcpcryptd.core.errors import ENOParseError

__all__ = [
    "ENO_KIND",
    "NON_SYN_OPTION",
    "MAX_OPTION_LEN",
    "MAX_LENGTH_BYTE_DATA",
    "Suboption",
    "SynOption",
    "parse_syn_option",
    "encode_syn_option",
    "build_syn_option",
    "is_eno_option",
    "has_eno_option",
    "syn_option_from_options",
    "parse_resumption",
    "is_resumption_suboption",
    "make_resumption_suboption",
]

#: All TCP options of a segment together fit in 40 bytes (RFC 793 data offset; RFC 8547 §4.4).
MAX_OPTION_LEN = 40
#: Largest suboption data a length byte can announce: nnnnn + 1 with nnnnn = 31 (RFC 8547 §4.4).
MAX_LENGTH_BYTE_DATA = 32

_GLOBAL_LIMIT = 0x20  # glt < 0x20: global suboption (v=0) or length byte (v=1)
_V_BIT = 0x80
_LENGTH_BYTE_LIMIT = 0xA0  # 0x80-0x9f: length bytes; a length byte must be followed by >= 0xa0
_GLT_MASK = 0x7F
_NNNNN_MASK = 0x1F
_B_BIT = 0x01
_A_BIT = 0x02
_HEADER_LEN = 2  # kind and length bytes
_MAX_RESUMPTION_DATA = RESUME_HALF_LEN + MAX_RESUME_NONCE_LEN  # 17 (RFC 8548 §3.5)


@dataclass(frozen=True, slots=True)
class Suboption:
    """A TEP suboption of a SYN-form ENO option (RFC 8547 §4.1, §4.4).

    ``tep`` is the 7-bit TEP identifier (0x20-0x7f) with the v bit stripped; ``v`` is the
    variable-data bit as sent. ``data`` is the suboption data (never the length byte); only a
    suboption with ``v`` set can carry data. A v=1 suboption with empty data exists on the
    wire only as the last suboption of an option (its data runs to the option's end).
    """

    tep: int
    v: bool = False
    data: bytes = b""

    def __post_init__(self) -> None:
        if not _GLOBAL_LIMIT <= self.tep <= _GLT_MASK:
            raise ValueError(f"TEP identifier {self.tep:#x} outside 0x20-0x7f (RFC 8547 §4.1)")
        if self.data and not self.v:
            raise ValueError("suboption data needs v=1 (RFC 8547 §4.4)")

    @property
    def byte(self) -> int:
        """The suboption's first byte on the wire: ``tep | 0x80`` when v is set."""
        return self.tep | _V_BIT if self.v else self.tep


@dataclass(frozen=True, slots=True)
class SynOption:
    """A parsed SYN-form ENO option (RFC 8547 §4.1, Fig. 2).

    Make instances with :func:`parse_syn_option` or :func:`build_syn_option`, so that
    ``raw`` always holds the exact wire bytes (kind and length included) that the
    negotiation transcript needs (RFC 8547 §4.8).
    """

    #: The first global suboption as received (z bits kept), ``None`` when implicit (= 0x00).
    gopt: int | None
    #: The TEP suboptions in wire order.
    suboptions: tuple[Suboption, ...]
    #: The option exactly as on the wire, including kind (69) and length bytes.
    raw: bytes

    @property
    def global_suboption(self) -> int:
        """The global suboption in force: the explicit one, or the implicit 0x00 (§4.2)."""
        return 0 if self.gopt is None else self.gopt

    @property
    def b(self) -> int:
        """Passive role bit b (RFC 8547 §4.2): 1 for every passive opener."""
        return self.global_suboption & _B_BIT

    @property
    def a(self) -> int:
        """Application-aware bit a (RFC 8547 §4.2)."""
        return (self.global_suboption & _A_BIT) >> 1

    @property
    def teps(self) -> tuple[int, ...]:
        """TEP identifiers (v bit stripped) in wire order, repetitions included."""
        return tuple(sub.tep for sub in self.suboptions)

    @property
    def vacuous(self) -> bool:
        """True for an option without TEP suboptions (RFC 8547 §4.6)."""
        return not self.suboptions

    @property
    def syn_tep(self) -> int | None:
        """The "SYN TEP": the last TEP identifier, which governs SYN data (RFC 8547 §4.7)."""
        return self.suboptions[-1].tep if self.suboptions else None

    def suboptions_for(self, tep: int) -> tuple[Suboption, ...]:
        """All suboptions carrying TEP identifier ``tep``, in wire order."""
        return tuple(sub for sub in self.suboptions if sub.tep == tep)


#: Recently parsed options, by their bytes: every host running one configuration sends the
#: same SYN-form option in every SYN (RFC 8547 §4.6: identical on retransmissions too), and
#: the engine reads it more than once per connection.  A :class:`SynOption` is immutable, so
#: one object serves all; emptied when full; a malformed option is never stored.
_PARSED: dict[bytes, SynOption] = {}
_PARSED_MAX = 64


def parse_syn_option(raw: bytes | bytearray | memoryview) -> SynOption:
    """Parse a whole SYN-form ENO option: kind, length and contents (RFC 8547 §4.1-4.4).

    Raises :class:`ENOParseError` if the kind is not 69, the length byte does not match the
    number of bytes given, the option is longer than TCP option space (40 bytes), a length
    byte is followed by a byte in 0x00-0x9f or by nothing, or a length byte announces data
    running past the end of the option (§4.4 items 1 and 2). Later global suboptions are
    ignored (§4.2); the z bits are kept in ``gopt`` but play no part in the role or
    application-aware bits.
    """
    raw = bytes(raw)
    option = _PARSED.get(raw)
    if option is None:
        option = _parse_syn_option(raw)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = option
    return option


def _parse_syn_option(raw: bytes) -> SynOption:
    """:func:`parse_syn_option` itself."""
    if len(raw) < _HEADER_LEN:
        raise ENOParseError(f"ENO option of {len(raw)} bytes has no kind and length")
    if raw[0] != ENO_KIND:
        raise ENOParseError(f"option kind {raw[0]} is not ENO ({ENO_KIND})")
    if raw[1] != len(raw):
        raise ENOParseError(f"ENO length byte {raw[1]} does not match {len(raw)} option bytes")
    if len(raw) > MAX_OPTION_LEN:
        raise ENOParseError(f"ENO option of {len(raw)} bytes exceeds TCP option space")

    gopt: int | None = None
    suboptions: list[Suboption] = []
    end = len(raw)
    i = _HEADER_LEN
    while i < end:
        byte = raw[i]
        if byte < _GLOBAL_LIMIT:
            if gopt is None:
                gopt = byte
            i += 1
        elif byte < _V_BIT:
            suboptions.append(Suboption(byte))
            i += 1
        elif byte < _LENGTH_BYTE_LIMIT:
            data_len = (byte & _NNNNN_MASK) + 1
            if i + 1 >= end:
                raise ENOParseError("length byte ends the ENO option (RFC 8547 §4.4)")
            tep_byte = raw[i + 1]
            if tep_byte < _LENGTH_BYTE_LIMIT:
                raise ENOParseError(
                    f"length byte followed by {tep_byte:#04x}, not a TEP with v=1 (RFC 8547 §4.4)"
                )
            data_start = i + 2
            if data_start + data_len > end:
                raise ENOParseError(
                    f"length byte announces {data_len} bytes past the option end (RFC 8547 §4.4)"
                )
            suboptions.append(
                Suboption(tep_byte & _GLT_MASK, True, raw[data_start : data_start + data_len])
            )
            i = data_start + data_len
        else:
            suboptions.append(Suboption(byte & _GLT_MASK, True, raw[i + 1 : end]))
            i = end
    return SynOption(gopt, tuple(suboptions), raw)


def encode_syn_option(gopt: int | None, suboptions: Iterable[Suboption]) -> bytes:
    """The shortest valid SYN-form ENO option for ``gopt`` and ``suboptions`` (RFC 8547 §4.4).

    The global suboption (if not ``None``) goes first. A v=1 suboption that is last needs no
    length byte (its data runs to the option's end, any length); one that is not last gets a
    length byte and must carry 1-32 bytes of data. Raises :class:`ValueError` for what cannot
    be encoded: ``gopt`` outside 0x00-0x1f, a non-last v=1 suboption with 0 or more than 32
    data bytes, or an option longer than TCP option space (40 bytes).
    """
    subs = tuple(suboptions)
    contents = bytearray()
    if gopt is not None:
        if not 0 <= gopt < _GLOBAL_LIMIT:
            raise ValueError(f"global suboption {gopt:#x} outside 0x00-0x1f (RFC 8547 §4.2)")
        contents.append(gopt)
    for index, sub in enumerate(subs):
        is_last = index == len(subs) - 1
        if sub.v and not is_last:
            if not 1 <= len(sub.data) <= MAX_LENGTH_BYTE_DATA:
                raise ValueError(
                    f"a v=1 suboption that is not last needs 1-{MAX_LENGTH_BYTE_DATA} data bytes,"
                    f" got {len(sub.data)} (RFC 8547 §4.4)"
                )
            contents.append(_V_BIT | (len(sub.data) - 1))
        contents.append(sub.byte)
        contents += sub.data
    total = _HEADER_LEN + len(contents)
    if total > MAX_OPTION_LEN:
        raise ValueError(f"ENO option of {total} bytes exceeds TCP option space ({MAX_OPTION_LEN})")
    return bytes((ENO_KIND, total)) + bytes(contents)


def build_syn_option(gopt: int | None, suboptions: Iterable[Suboption]) -> SynOption:
    """A :class:`SynOption` to send: :func:`encode_syn_option`, with ``raw`` filled in."""
    subs = tuple(suboptions)
    return SynOption(gopt, subs, encode_syn_option(gopt, subs))


def is_eno_option(kind: int) -> bool:
    """True when a TCP option of this kind is an ENO option, of either form (RFC 8547 §4.1)."""
    return kind == ENO_KIND


def has_eno_option(options: Iterable[tuple[int, bytes]]) -> bool:
    """True when any of a segment's ``(kind, data)`` options is ENO.

    For a non-SYN segment this is all ENO looks at: contents are ignored and several ENO
    options count as one (RFC 8547 §4.1).
    """
    return any(kind == ENO_KIND for kind, _ in options)


def syn_option_from_options(options: Iterable[tuple[int, bytes]]) -> SynOption | None:
    """The SYN-form ENO option of a SYN segment's ``(kind, data)`` options, or ``None``.

    ``data`` is an option's contents without kind and length bytes (as
    :func:`tcpcryptd.packet.options.parse` returns them); the wire bytes are rebuilt exactly.
    A SYN carrying more than one ENO option must be treated as having none, with encryption
    disabled (RFC 8547 §4.1): that raises :class:`ENOParseError`, whose handling (disable
    ENO, send no ENO) is the same. A malformed option raises it too.
    """
    found = [data for kind, data in options if kind == ENO_KIND]
    if not found:
        return None
    if len(found) > 1:
        raise ENOParseError(f"SYN carries {len(found)} ENO options (RFC 8547 §4.1)")
    data = bytes(found[0])
    if len(data) > MAX_OPTION_LEN - _HEADER_LEN:
        raise ENOParseError(f"ENO option contents of {len(data)} bytes exceed TCP option space")
    return parse_syn_option(bytes((ENO_KIND, len(data) + _HEADER_LEN)) + data)


def is_resumption_suboption(sub: Suboption) -> bool:
    """True for a well-formed tcpcrypt resumption suboption: v=1 and 9-17 data bytes.

    RFC 8548 §3.5: identifier half (9 bytes) then a nonce of 0-8 bytes.
    """
    return sub.v and RESUME_HALF_LEN <= len(sub.data) <= _MAX_RESUMPTION_DATA


def parse_resumption(sub: Suboption) -> tuple[bytes, bytes] | None:
    """Split a tcpcrypt resumption suboption into (identifier half, nonce) (RFC 8548 §3.5).

    Returns ``None`` when the suboption is an offer of *fresh* key exchange: v=0, or v=1 with
    fewer than 9 data bytes ("MUST behave as if the same TEP had been sent with v = 0").
    Data longer than 17 bytes (9-byte half + nonce of at most 8 bytes) is not a valid
    resumption suboption: :class:`ENOParseError` is raised. In negotiation such a suboption is
    invalid data under the TEP's specification, which makes its TEP identifier invalid for the
    connection (RFC 8547 §4.5 item 2) -- it is neither resumed nor taken as a fresh offer,
    while the rest of the option stays usable.
    """
    if not sub.v or len(sub.data) < RESUME_HALF_LEN:
        return None
    if len(sub.data) > _MAX_RESUMPTION_DATA:
        raise ENOParseError(
            f"resumption suboption data of {len(sub.data)} bytes exceeds"
            f" {_MAX_RESUMPTION_DATA} (RFC 8548 §3.5)"
        )
    return sub.data[:RESUME_HALF_LEN], sub.data[RESUME_HALF_LEN:]


def make_resumption_suboption(tep: int, half: bytes, nonce: bytes) -> Suboption:
    """The resumption suboption ``TEP-byte(v=1) | half | nonce`` (RFC 8548 §3.5, Figs 2/3).

    ``half`` is resume[i]{0..8} for a host that was A in the original session, resume[i]{9..17}
    for one that was B; ``nonce`` is 0-8 bytes. Raises :class:`ValueError` otherwise.
    """
    if len(half) != RESUME_HALF_LEN:
        raise ValueError(f"identifier half must be {RESUME_HALF_LEN} bytes, got {len(half)}")
    if len(nonce) > MAX_RESUME_NONCE_LEN:
        raise ValueError(
            f"resumption nonce must be 0-{MAX_RESUME_NONCE_LEN} bytes, got {len(nonce)}"
        )
    return Suboption(tep, True, bytes(half) + bytes(nonce))
