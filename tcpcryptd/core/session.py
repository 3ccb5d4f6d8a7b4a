"""tcpcrypt key exchange and the established session (RFC 8548 §3.3-§3.8).

* :class:`InitiatorHandshake` (host A): makes (or is given) its ephemeral key and Init1 when constructed
  (the engine constructs it only when a flow reaches Init1, so a SYN flood costs no key
  generation), then turns Init2 into a :class:`Session`.
* :class:`ResponderHandshake` (host B): turns Init1 into ``(init2, Session)``.
* :class:`Session`: key generations, ``seal``/``open`` of frames, rekeying (§3.8), session ID
  (§3.4) and the next resumption secret (§3.5).  ``Session.resume`` builds one from a cached
  session secret.

Raw secrets are reachable as attributes (``ss``, ``prk``, ``es``, :meth:`Session.traffic_keys`)
for the test-vector generator; they never appear in ``repr`` and are never logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from tcpcryptd.core.aead import AEAD_ALGORITHMS, AEADAlgorithm, TrafficKey, aead_algorithm
from tcpcryptd.core.constants import (
    DEFAULT_MAX_INIT_LEN,
    MAX_RESUME_NONCE_LEN,
    N_A_LEN,
    N_B_LEN,
    AEADId,
)
from tcpcryptd.core.errors import CipherMismatchError, FrameError, InitMessageError
from tcpcryptd.core.frame import (
    CONTROL_REKEY,
    HEADER_LEN,
    Frame,
    decode_frame,
    encode_frame,
)
from tcpcryptd.core.keys import (
    PRF,
    KeySchedule,
    compute_prk,
    next_session_secret,
    resumption_id,
    session_id,
)
from tcpcryptd.core.messages import encode_init1, encode_init2, parse_init1, parse_init2
from tcpcryptd.core.negotiation import Role
from tcpcryptd.core.tep import EphemeralKey, key_agreement

#: The v bit of a suboption byte (RFC 8547 §4.2); set in the TEP byte of resumed sessions.
TEP_BYTE_V = 0x80

#: Ciphers host A offers by default (RFC 8548 §6: AES-128-GCM is mandatory).
DEFAULT_CIPHERS: tuple[int, ...] = (AEADId.AES_128_GCM, AEADId.AES_256_GCM,
                                    AEADId.CHACHA20_POLY1305)
#: Host B's default preference, in increasing priority (last = most preferred).
DEFAULT_PREFERENCE: tuple[int, ...] = (AEADId.CHACHA20_POLY1305, AEADId.AES_256_GCM,
                                       AEADId.AES_128_GCM)


#: The key cache of a session holding no TrafficKey: one immutable empty mapping shared by
#: every released session (an idle connection owns no empty dicts).
_NO_KEYS: Mapping[int, TrafficKey] = MappingProxyType({})


def _check_ciphers(ciphers: Sequence[int], what: str) -> tuple[int, ...]:
    if not ciphers:
        raise ValueError(f"{what} must not be empty")
    unknown = [c for c in ciphers if c not in AEAD_ALGORITHMS]
    if unknown:
        raise ValueError(f"{what} has unsupported AEAD ids {unknown}")
    return tuple(ciphers)


def _nonce(given: bytes | None, length: int, name: str, random: Callable[[int], bytes]) -> bytes:
    if given is None:
        return random(length)
    if len(given) != length:
        raise ValueError(f"{name} must be {length} bytes")
    return bytes(given)


def _ephemeral(tep: int, private_key: bytes | None, ephemeral: EphemeralKey | None,
               random: Callable[[int], bytes]) -> EphemeralKey:
    """The handshake's key pair: ``ephemeral`` if given (made ahead, engine/keypool.py), else
    one loaded from ``private_key`` (test vectors), else a fresh one from ``random``."""
    scheme = key_agreement(tep)
    if ephemeral is None:
        return scheme.generate(random) if private_key is None else scheme.load_private(private_key)
    if private_key is not None:
        raise ValueError("give private_key or ephemeral, not both")
    if ephemeral.scheme is not scheme:
        raise ValueError(f"ephemeral key is {ephemeral.scheme.name}, not {scheme.name}")
    return ephemeral


class Session:
    """An established tcpcrypt session: one session secret ``ss[i]`` and its key generations.

    ``role`` is the role in *this* connection, a :class:`~tcpcryptd.core.negotiation.Role`
    (``"A"`` or ``"B"`` is taken as one); ``sends_with_k_ab`` says which
    traffic keys this host encrypts with, fixed by its role in the original ss[0] session
    (RFC 8548 §3.3, §3.5).  ``local_generation`` / ``remote_generation`` are the generation
    numbers of RFC 8548 §3.8.  Several local increments not yet announced are announced one
    per sealed frame (each carries rekey=1), so the peer's count never skips a generation;
    ``send_generation`` is the generation of the latest sealed frame.  Keys of old
    generations stay until :meth:`discard_generations_below`; the caller bounds them.

    Each traffic key in use has a :class:`TrafficKey` with its AEAD object (an OpenSSL
    context, ~2.4 KB: most of an idle connection's memory).  :meth:`release_aead` drops them
    all, keeping the raw keys in the key schedule; ``seal``/``open`` rebuild the one they
    need (~1 us), of whatever generation, so rekeying is unaffected.

    ``seal`` refuses an offset below the end of the previous sealed frame: a frame ID is never
    used twice under one key (RFC 8548 §3.6).  Retransmissions replay stored wire bytes.
    """

    __slots__ = ("role", "tep_byte", "aead", "ss", "sn", "sends_with_k_ab", "session_id",
                 "schedule", "local_generation", "remote_generation", "send_generation",
                 "fin_sent", "_next_seal_offset", "_send_keys", "_recv_keys")

    def __init__(self, role: Role | str, tep_byte: int, aead: AEADAlgorithm, ss: bytes, sn: bytes,
                 sends_with_k_ab: bool) -> None:
        if role not in (Role.A, Role.B):
            raise ValueError(f"role must be 'A' or 'B', not {role!r}")
        self.role = role if type(role) is Role else Role(role)
        self.tep_byte = tep_byte
        self.aead = aead
        self.ss = ss = bytes(ss)
        self.sn = sn = bytes(sn)
        self.sends_with_k_ab = sends_with_k_ab
        prf = PRF(ss)   # one keying for both derivations from ss[i] (core/keys.py)
        self.session_id = session_id(tep_byte, prf, sn)
        self.schedule = schedule = KeySchedule(prf, sn, aead.traffic_key_len)
        self.local_generation = 0
        self.remote_generation = 0
        self.send_generation = 0
        self.fin_sent = False
        self._next_seal_offset = 0
        # generation -> TrafficKey (the shared empty _NO_KEYS while none: released).  The
        # keys of generation 0 are made now (not on the first frame); release_aead drops
        # them and seal/open make them again from the schedule when needed (_key).
        k_ab, k_ba = schedule.keys(0)
        self._send_keys: Mapping[int, TrafficKey] = {
            0: TrafficKey(aead, k_ab if sends_with_k_ab else k_ba)}
        self._recv_keys: Mapping[int, TrafficKey] = {
            0: TrafficKey(aead, k_ba if sends_with_k_ab else k_ab)}

    @classmethod
    def resume(cls, role: Role | str, tep: int, aead: AEADAlgorithm, ss: bytes, *,
               sends_with_k_ab: bool, local_nonce: bytes, peer_nonce: bytes) -> Session:
        """A session resumed from cached ``ss[i]`` (RFC 8548 §3.5); no Init messages.

        ``sn[i] = nonce_a | nonce_b`` where nonce_a is the nonce of the host that was A in
        the original session (the one sending with k_ab), whatever the current roles.  The
        session ID's TEP byte has v = 1.  The first frame is at offset 0.
        """
        for nonce in (local_nonce, peer_nonce):
            if len(nonce) > MAX_RESUME_NONCE_LEN:
                raise ValueError(f"resumption nonce longer than {MAX_RESUME_NONCE_LEN} bytes")
        sn = local_nonce + peer_nonce if sends_with_k_ab else peer_nonce + local_nonce
        return cls(role, tep | TEP_BYTE_V, aead, ss, sn, sends_with_k_ab)

    def traffic_keys(self, generation: int) -> tuple[bytes, bytes]:
        """Raw ``(k_ab[j], k_ba[j])`` (secret; for test vectors and diagnostics only)."""
        return self.schedule.keys(generation)

    def _key(self, generation: int, sending: bool) -> TrafficKey:
        cache = self._send_keys if sending else self._recv_keys
        key = cache.get(generation)
        if key is None:
            k_ab, k_ba = self.schedule.keys(generation)
            key = TrafficKey(self.aead, k_ab if sending == self.sends_with_k_ab else k_ba)
            if cache is _NO_KEYS:
                cache = {}
                if sending:
                    self._send_keys = cache
                else:
                    self._recv_keys = cache
            cache[generation] = key  # type: ignore[index]
        return key

    @property
    def rekey_pending(self) -> bool:
        """True while a local generation increment still has to be announced by a frame."""
        return self.send_generation < self.local_generation

    @property
    def may_initiate_empty_rekey(self) -> bool:
        """Whether an empty-frame rekey (e.g. keep-alive, §3.9) may start now.

        RFC 8548 §3.8: not more than once while the remote generation is below the local one.
        """
        return self.remote_generation >= self.local_generation and not self.fin_sent

    def initiate_rekey(self) -> None:
        """Increment the local generation; the next sealed frame carries rekey=1 (§3.8)."""
        self.local_generation += 1

    def seal(self, offset: int, data: bytes | bytearray | memoryview, *, fin: bool = False,
             urgent: int | None = None) -> bytes:
        """Encrypt ``data`` into one whole frame at wire ``offset`` (RFC 8548 §3.6, §3.7).

        ``ValueError`` for an offset that overlaps an earlier sealed frame or data too long for
        a frame; ``RuntimeError`` after the FINp frame (no frame may follow it).
        """
        if self.fin_sent:
            raise RuntimeError("no frame may follow the FINp frame (RFC 8548 §3.7)")
        if offset < self._next_seal_offset:
            raise ValueError(f"offset {offset} below the end of the previous frame "
                             f"({self._next_seal_offset}): frame ID reuse")
        rekey = self.send_generation < self.local_generation
        generation = self.send_generation + 1 if rekey else self.send_generation
        key = self._send_keys.get(generation)
        if key is None:
            key = self._key(generation, True)   # a new generation, or released while idle
        frame = encode_frame(key, offset, data, rekey=rekey, fin=fin, urgent=urgent)
        self.send_generation = generation
        self._next_seal_offset = offset + len(frame)
        self.fin_sent = fin
        return frame

    def open(self, offset: int, frame: bytes | bytearray | memoryview) -> Frame:
        """Verify and decrypt one whole frame at wire ``offset`` (RFC 8548 §3.6, §3.8).

        rekey=1 selects generation remote + 1; on success the remote generation advances and,
        if it passes the local one, the local one follows and ``Frame.needs_rekey_reply`` is
        set (unless our FINp frame is already sealed).  Raises :class:`FrameError` /
        :class:`FrameAuthError`; the generations change only for a verified frame.
        """
        if len(frame) < HEADER_LEN:
            raise FrameError(f"{len(frame)} bytes are shorter than a frame header")
        if not frame[0] & CONTROL_REKEY:
            generation = self.remote_generation
            key = self._recv_keys.get(generation)
            if key is None:
                key = self._key(generation, False)   # released while idle
            return decode_frame(key, offset, frame, generation=generation)
        generation = self.remote_generation + 1
        result = decode_frame(self._key(generation, False), offset, frame, generation=generation)
        self.remote_generation = generation
        if generation > self.local_generation:
            self.local_generation = generation
            result.needs_rekey_reply = not self.fin_sent
        return result

    def discard_generations_below(self, generation: int) -> None:
        """Delete keys of generations below ``generation`` (RFC 8548 §3.8 SHOULD).

        Keys still in use are never deleted: the remote generation's, and the send
        generation's until the FINp frame is sealed (no frame follows it, §3.7).
        """
        sending = self.remote_generation if self.fin_sent else self.send_generation
        floor = min(generation, sending, self.remote_generation)
        for cache in (self._send_keys, self._recv_keys):
            for old in [g for g in cache if g < floor]:
                del cache[old]  # type: ignore[attr-defined]
        self.schedule.discard_below(floor)

    @property
    def aead_built(self) -> bool:
        """True while some traffic key of this session holds its AEAD object."""
        return bool(self._send_keys or self._recv_keys)

    def release_aead(self) -> None:
        """Drop every :class:`TrafficKey` (and its AEAD object); the raw keys stay.

        For idle connections: the next ``seal`` or ``open`` rebuilds the key it uses from the
        key schedule, whatever its generation (discarded generations stay discarded).
        """
        self._send_keys = self._recv_keys = _NO_KEYS

    def resumption_secret(self) -> tuple[bytes, bytes]:
        """``(ss[i+1], resume[i+1])`` to cache for a later resumption (RFC 8548 §3.5)."""
        ss_next = next_session_secret(self.ss)
        return ss_next, resumption_id(ss_next)

    def __repr__(self) -> str:
        return (f"Session(role={self.role}, tep=0x{self.tep_byte:02x}, aead={self.aead.name}, "
                f"local={self.local_generation}, remote={self.remote_generation})")


class InitiatorHandshake:
    """Host A's side of the key exchange (RFC 8548 §3.3).

    ``tep`` is the TEP byte as host B sent it (its v bit goes into the session ID, §3.4);
    the low 7 bits select the key agreement.  ``transcript`` is the ENO transcript (RFC 8547
    §4.8).  ``ciphers`` is the sym_cipher_list.  ``private_key``/``n_a`` fix the ephemeral key
    and nonce (test vectors); ``ephemeral`` is a key pair made ahead (never used before, RFC
    8548 §8); by default both are drawn from ``random`` (``random(n)``: n random bytes).
    ``init1`` is ready at once.
    """

    def __init__(self, tep: int, transcript: bytes, ciphers: Sequence[int] = DEFAULT_CIPHERS,
                 *, private_key: bytes | None = None, n_a: bytes | None = None,
                 ephemeral: EphemeralKey | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.tep_byte = tep
        self.transcript = bytes(transcript)
        self.ciphers = _check_ciphers(ciphers, "ciphers")
        self.n_a = _nonce(n_a, N_A_LEN, "N_A", random)
        self.ephemeral = _ephemeral(tep, private_key, ephemeral, random)
        self.init1 = encode_init1(self.ciphers, self.n_a, self.ephemeral.pub)
        self.es: bytes | None = None
        self.prk: bytes | None = None
        self.session: Session | None = None

    def receive_init2(self, raw: bytes | bytearray | memoryview, *,
                      max_len: int = DEFAULT_MAX_INIT_LEN) -> Session:
        """Complete the exchange with Init2 (exactly ``message_len`` bytes).

        Raises :class:`InitMessageError`, :class:`CipherMismatchError` (sym_cipher not
        offered) or :class:`KeyAgreementError` (bad Pub_B).
        """
        if self.session is not None:
            raise RuntimeError("Init2 already received")
        init2_bytes = bytes(raw)
        init2 = parse_init2(init2_bytes, self.tep_byte, max_len=max_len)
        if init2.sym_cipher not in self.ciphers:
            raise CipherMismatchError(f"Init2 selects 0x{init2.sym_cipher:04x}, not offered")
        self.es = self.ephemeral.exchange(init2.pub_b)
        self.prk = compute_prk(self.n_a, self.transcript, self.init1, init2_bytes, self.es)
        self.session = Session(Role.A, self.tep_byte, aead_algorithm(init2.sym_cipher), self.prk,
                               b"", sends_with_k_ab=True)
        return self.session

    def __repr__(self) -> str:
        return f"InitiatorHandshake(tep=0x{self.tep_byte:02x}, done={self.session is not None})"


def select_cipher(offered: Sequence[int], preference: Sequence[int]) -> int:
    """The most preferred of ``preference`` (increasing priority) that A ``offered``.

    Unknown ids in ``offered`` are skipped; :class:`InitMessageError` if nothing is common.
    """
    for candidate in reversed(preference):
        if candidate in offered:
            return candidate
    raise InitMessageError("Init1 offers no acceptable sym_cipher")


class ResponderHandshake:
    """Host B's side of the key exchange (RFC 8548 §3.3).

    ``preference`` lists acceptable AEAD ids in increasing priority (last = most preferred,
    like TCP_CRYPT_BCONF).  The ephemeral key is generated only when Init1 arrives, unless
    ``private_key`` fixes it (test vectors) or ``ephemeral`` is a key pair made ahead (never
    used before, RFC 8548 §8); ``n_b`` is fixed likewise.  Both are drawn from ``random``
    otherwise.
    """

    def __init__(self, tep: int, transcript: bytes,
                 preference: Sequence[int] = DEFAULT_PREFERENCE, *,
                 private_key: bytes | None = None, n_b: bytes | None = None,
                 ephemeral: EphemeralKey | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.tep_byte = tep
        self.transcript = bytes(transcript)
        self.preference = _check_ciphers(preference, "preference")
        self.n_b = _nonce(n_b, N_B_LEN, "N_B", random)
        self._random = random
        self.ephemeral: EphemeralKey | None = (
            None if private_key is None and ephemeral is None
            else _ephemeral(tep, private_key, ephemeral, random))
        key_agreement(tep)  # an unknown TEP fails here, not on the first Init1
        self.es: bytes | None = None
        self.prk: bytes | None = None
        self.session: Session | None = None

    def receive_init1(self, raw: bytes | bytearray | memoryview, *,
                      max_len: int = DEFAULT_MAX_INIT_LEN) -> tuple[bytes, Session]:
        """Answer Init1 (exactly ``message_len`` bytes): return ``(init2, session)``.

        Raises :class:`InitMessageError` (also when no offered cipher is acceptable) or
        :class:`KeyAgreementError` (bad Pub_A).
        """
        if self.session is not None:
            raise RuntimeError("Init1 already received")
        init1_bytes = bytes(raw)
        init1 = parse_init1(init1_bytes, self.tep_byte, max_len=max_len)
        sym_cipher = select_cipher(init1.sym_ciphers, self.preference)
        if self.ephemeral is None:
            self.ephemeral = _ephemeral(self.tep_byte, None, None, self._random)
        self.es = self.ephemeral.exchange(init1.pub_a)
        init2 = encode_init2(sym_cipher, self.n_b, self.ephemeral.pub)
        self.prk = compute_prk(init1.n_a, self.transcript, init1_bytes, init2, self.es)
        self.session = Session(Role.B, self.tep_byte, aead_algorithm(sym_cipher), self.prk, b"",
                               sends_with_k_ab=False)
        return init2, self.session

    def __repr__(self) -> str:
        return f"ResponderHandshake(tep=0x{self.tep_byte:02x}, done={self.session is not None})"
