"""TCP-ENO negotiation (RFC 8547 §4.3-4.8): roles, negotiated TEP, passive answer, fallback.

Pure functions plus one small sans-IO state machine, :class:`ENOEndpoint`, that applies the
per-segment rules of RFC 8547 §4.6 for one connection end. Nothing here reads a clock or
touches the network.

Outcomes are :class:`Negotiated` (a TEP was agreed) or :class:`Fallback` (plain TCP, with a
:class:`FallbackReason` naming the RFC 8547 §4.6 condition, for counters).

Validity of a TEP (RFC 8547 §4.5) is decided by an ``is_valid(a_sub, b_sub)`` callback over
the suboptions host A and host B sent for it; :class:`TcpcryptValidity` is tcpcrypt's
(RFC 8548 §3.5: fresh offers, resumption offers, resumption identifier halves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tcpcryptd.core.eno import (
    NON_SYN_OPTION,
    Suboption,
    SynOption,
    build_syn_option,
    has_eno_option,
    is_resumption_suboption,
    parse_resumption,
    syn_option_from_options,
)
from tcpcryptd.core.errors import ENOParseError

__all__ = [
    "Role",
    "FallbackReason",
    "Negotiated",
    "Fallback",
    "IsValid",
    "ResumeAnswer",
    "TcpcryptValidity",
    "negotiate",
    "passive_answer",
    "passive_open",
    "may_accept_syn_data",
    "must_abort_for_syn_data",
    "ENOEndpoint",
    "TCP_FAST_OPEN_KIND",
]

_B_BIT = 0x01
_A_BIT = 0x02
_Z_BITS = 0x1C
#: TCP Fast Open option kind (RFC 7413); a non-empty one conflicts with SYN+ENO data (§4.7).
TCP_FAST_OPEN_KIND = 34


class Role(StrEnum):
    """TCP-ENO roles (RFC 8547 §4.3): A sent b=0, B sent b=1."""

    A = "A"
    B = "B"


class FallbackReason(StrEnum):
    """Why ENO fell back to plain TCP: one value per RFC 8547 §4.6 condition."""

    #: A segment up to the first received ACK had no ENO option (§4.6 item 1).
    NO_ENO = "no-eno"
    #: An ill-formed SYN-form option, or several ENO options in a SYN (§4.1, §4.4, §4.6 item 1).
    MALFORMED = "malformed"
    #: Both hosts sent the same b bit (§4.3, §4.6 item 3).
    ROLE_CONFLICT = "role-conflict"
    #: No TEP identifier is valid for the connection (§4.5, §4.6 item 2).
    NO_COMMON_TEP = "no-common-tep"
    #: A SYN-form option without TEP suboptions (§4.6).
    VACUOUS = "vacuous"
    #: Mandatory application-aware mode and the peer sent a=0 (§4.2, §4.6 item 3).
    AA_MANDATORY = "aa-mandatory"
    #: The only candidates were resumption answers naming another session (RFC 8548 §3.5).
    RESUME_MISMATCH = "resume-mismatch"
    #: A SYN without ACK answered our SYN: both hosts opened actively, both with b=0, so
    #: the roles clash (§4.2 on the b bit, §4.6 item 3); seen by the engine before any option
    #: is compared.
    SIMULTANEOUS_OPEN = "simultaneous-open"


@dataclass(frozen=True, slots=True)
class Negotiated:
    """A successful TCP-ENO negotiation (RFC 8547 §4.5, §4.8)."""

    #: This host's role.
    role: Role
    #: The negotiated TEP identifier (v bit stripped).
    tep: int
    #: The TEP byte as B sent it, v bit included: the first byte of the session ID (§5.1).
    tep_byte: int
    #: A's SYN-form option bytes followed by B's, exactly as on the wire (§4.8).
    transcript: bytes
    a_option: SynOption
    b_option: SynOption
    #: The suboptions of the negotiated TEP in A's and B's options (the last ones if repeated).
    a_suboption: Suboption
    b_suboption: Suboption
    #: The peer's global suboption; 0 when it was implicit (§4.2).
    peer_gopt: int
    #: True when both A and B sent resumption suboptions for the TEP (RFC 8548 §3.5).
    resumed: bool

    @property
    def peer_a(self) -> int:
        """The peer's application-aware bit (§4.2: an API MUST expose it)."""
        return (self.peer_gopt & _A_BIT) >> 1


@dataclass(frozen=True, slots=True)
class Fallback:
    """TCP-ENO failed: the connection goes on as plain TCP (RFC 8547 §4.6)."""

    reason: FallbackReason


#: ``is_valid(a_sub, b_sub)``: may this pair of suboptions, sent by host A and host B for
#: the same TEP, make that TEP valid (RFC 8547 §4.5 item 2)?
IsValid = Callable[[Suboption, Suboption], bool]

#: Passive opener's resumption hook: given A's resumption suboption, the resumption
#: suboption B answers with (other identifier half + B's nonce) when the half names a cached
#: session secret of that TEP, else ``None`` (RFC 8548 §3.5).
ResumeAnswer = Callable[[Suboption], Suboption | None]


@dataclass(frozen=True, slots=True)
class TcpcryptValidity:
    """tcpcrypt's ``is_valid`` callback (RFC 8548 §3.5, RFC 8547 §4.5 item 2).

    * Suboption data longer than 17 bytes is invalid (not a resumption suboption).
    * A fresh offer (v=0, or v=1 with < 9 data bytes) is valid from either side; B answering
      A's resumption offer fresh is valid ("implies willingness to do fresh key exchange").
    * B's resumption suboption is valid only if A also sent one and the two identifier halves
      are the two halves of ``resume_id`` -- resume[i] (18 bytes) of the session this host
      offered (active opener) or found in its cache (passive opener). Without ``resume_id``
      no resumption answer is valid: an active opener MUST ignore a non-matching one.
    """

    resume_id: bytes | None = None

    def __call__(self, a_sub: Suboption, b_sub: Suboption) -> bool:
        try:
            a_resumption = parse_resumption(a_sub)
            b_resumption = parse_resumption(b_sub)
        except ENOParseError:
            return False
        if b_resumption is None:
            return True
        if a_resumption is None or self.resume_id is None:
            return False
        a_half, b_half = a_resumption[0], b_resumption[0]
        return self.resume_id in (a_half + b_half, b_half + a_half)


_DEFAULT_VALIDITY = TcpcryptValidity()


def _role(local: SynOption) -> Role:
    return Role.B if local.b else Role.A


def _negotiated(
    local: SynOption, peer: SynOption, a_sub: Suboption, b_sub: Suboption
) -> Negotiated:
    role = _role(local)
    a_option, b_option = (local, peer) if role is Role.A else (peer, local)
    return Negotiated(
        role=role,
        tep=b_sub.tep,
        tep_byte=b_sub.byte,
        transcript=a_option.raw + b_option.raw,
        a_option=a_option,
        b_option=b_option,
        a_suboption=a_sub,
        b_suboption=b_sub,
        peer_gopt=peer.global_suboption,
        resumed=is_resumption_suboption(a_sub) and is_resumption_suboption(b_sub),
    )


def _globals_conflict(
    local: SynOption, peer: SynOption, aa_mandatory: bool
) -> FallbackReason | None:
    """RFC 8547 §4.6 item 3: same b bit, or mandatory application-aware mode and peer a=0."""
    if local.b == peer.b:
        return FallbackReason.ROLE_CONFLICT
    if aa_mandatory and not peer.a:
        return FallbackReason.AA_MANDATORY
    return None


def _last_occurrence_first(teps: Sequence[int]) -> list[int]:
    """Distinct TEP ids, ordered by their last position in ``teps``, last first."""
    return list(dict.fromkeys(reversed(teps)))


def negotiate(
    local: SynOption,
    peer: SynOption | None,
    *,
    aa_mandatory: bool = False,
    is_valid: IsValid = _DEFAULT_VALIDITY,
    repeatable: frozenset[int] = frozenset(),
) -> Negotiated | Fallback:
    """Outcome of TCP-ENO from this host's and the peer's SYN-form options (RFC 8547 §4.3-4.6).

    ``peer`` is ``None`` when the peer's SYN (or SYN-ACK) had no ENO option. Checks, in order:
    no ENO; the same b bit on both sides; mandatory application-aware mode (``aa_mandatory``)
    and peer a=0; a vacuous option on either side; then the negotiated TEP, which is the last
    TEP identifier in B's option that is valid (§4.5): present in both options, not repeated
    in either unless listed in ``repeatable`` (the TEP defines repetition), and accepted by
    ``is_valid(a_sub, b_sub)`` for every pair of its suboptions. Both ends compute the same
    TEP and transcript with opposite roles.
    """
    if peer is None:
        return Fallback(FallbackReason.NO_ENO)
    if is_valid is not _DEFAULT_VALIDITY:
        return _negotiate(local, peer, aa_mandatory, is_valid, repeatable)
    key = (local.raw, peer.raw, aa_mandatory, repeatable)
    outcome = _NEGOTIATED.get(key)
    if outcome is None:
        outcome = _negotiate(local, peer, aa_mandatory, is_valid, repeatable)
        _remember(_NEGOTIATED, key, outcome)
    return outcome


#: Recent outcomes of :func:`negotiate` and :func:`passive_open` with tcpcrypt's default
#: validity, by the options' bytes and the settings: every fresh connection between two
#: hosts of one configuration exchanges the same SYN-form options (RFC 8547 §4.6), and the
#: outcome depends on nothing else.  Outcomes and options are immutable, so one object
#: serves all.  A resumption offer (its nonce is new every time) or answer is decided
#: afresh; each cache is emptied when full.
_NEGOTIATED: dict[tuple, Negotiated | Fallback] = {}
_PASSIVE: dict[tuple, tuple[SynOption | None, Negotiated | Fallback]] = {}
_OUTCOMES_MAX = 64


def _remember(cache: dict, key: tuple, outcome: object) -> None:
    if len(cache) >= _OUTCOMES_MAX:
        cache.clear()
    cache[key] = outcome


def _negotiate(local: SynOption, peer: SynOption, aa_mandatory: bool, is_valid: IsValid,
               repeatable: frozenset[int]) -> Negotiated | Fallback:
    """:func:`negotiate` itself, once both options are known."""
    conflict = _globals_conflict(local, peer, aa_mandatory)
    if conflict is not None:
        return Fallback(conflict)
    if local.vacuous or peer.vacuous:
        return Fallback(FallbackReason.VACUOUS)
    a_option, b_option = (local, peer) if _role(local) is Role.A else (peer, local)
    resumption_rejected = False
    for tep in _last_occurrence_first(b_option.teps):
        a_subs = a_option.suboptions_for(tep)
        b_subs = b_option.suboptions_for(tep)
        if not a_subs or ((len(a_subs) > 1 or len(b_subs) > 1) and tep not in repeatable):
            continue
        if all(is_valid(a_sub, b_sub) for a_sub in a_subs for b_sub in b_subs):
            return _negotiated(local, peer, a_subs[-1], b_subs[-1])
        resumption_rejected |= any(is_resumption_suboption(b_sub) for b_sub in b_subs)
    return Fallback(
        FallbackReason.RESUME_MISMATCH if resumption_rejected else FallbackReason.NO_COMMON_TEP
    )


def _passive_gopt(gopt: int, aa_mandatory: bool) -> int:
    if not 0 <= gopt <= 0x1F or gopt & _Z_BITS:
        raise ValueError(f"global suboption {gopt:#x}: want 0x00-0x1f, z bits 0 (RFC 8547 §4.2)")
    return gopt | _B_BIT | (_A_BIT if aa_mandatory else 0)


def passive_open(
    received: SynOption | None,
    supported: Sequence[int],
    *,
    gopt: int = _B_BIT,
    aa_mandatory: bool = False,
    is_valid: IsValid = _DEFAULT_VALIDITY,
    resume: ResumeAnswer | None = None,
    repeatable: frozenset[int] = frozenset(),
) -> tuple[SynOption | None, Negotiated | Fallback]:
    """A passive opener's SYN-ACK option and (provisional) outcome (RFC 8547 §4.5, §4.6).

    ``received`` is the SYN's ENO option (``None`` if it had none or it was malformed);
    ``supported`` lists B's TEP identifiers in increasing priority. B answers with its
    global suboption (``gopt``, b forced to 1 as every passive opener must; a also set in
    mandatory application-aware mode, §8.4) plus exactly one TEP suboption already checked
    valid: B's highest-priority TEP that A offered. For a resumption offer the ``resume``
    hook may supply B's resumption suboption (a cache hit is validity by RFC 8548 §3.5);
    otherwise B answers the TEP fresh (v=0) if ``is_valid`` accepts that.

    The option is ``None`` (send no ENO) when the SYN had none, or when its global
    suboption is incompatible: §4.6 says to "refrain from sending any further ENO options"
    then, and Fig. 10 case 3 shows no ENO for the application-aware case. When the SYN had
    ENO but nothing usable (vacuous SYN, no common or valid TEP), the answer is a vacuous
    option (global suboption only), which §4.6 permits only because the SYN had ENO.

    The returned :class:`Negotiated` is provisional: B's encryption starts only once A's
    ACK carries ENO (§4.6); :class:`ENOEndpoint` tracks that.
    """
    own_gopt = _passive_gopt(gopt, aa_mandatory)
    if received is None:
        return None, Fallback(FallbackReason.NO_ENO)
    if is_valid is not _DEFAULT_VALIDITY or (
            resume is not None and any(map(is_resumption_suboption, received.suboptions))):
        return _passive_open(received, supported, own_gopt, aa_mandatory, is_valid, resume,
                             repeatable)
    key = (received.raw, tuple(supported), own_gopt, aa_mandatory, repeatable)
    answered = _PASSIVE.get(key)
    if answered is None:
        answered = _passive_open(received, supported, own_gopt, aa_mandatory, is_valid, None,
                                 repeatable)
        _remember(_PASSIVE, key, answered)
    return answered


def _passive_open(
    received: SynOption,
    supported: Sequence[int],
    own_gopt: int,
    aa_mandatory: bool,
    is_valid: IsValid,
    resume: ResumeAnswer | None,
    repeatable: frozenset[int],
) -> tuple[SynOption | None, Negotiated | Fallback]:
    """:func:`passive_open` itself, for a SYN with ENO; ``own_gopt`` B's global suboption."""
    if received.b:
        return None, Fallback(FallbackReason.ROLE_CONFLICT)
    if aa_mandatory and not received.a:
        return None, Fallback(FallbackReason.AA_MANDATORY)
    if not received.vacuous:
        for tep in _last_occurrence_first(supported):
            a_subs = received.suboptions_for(tep)
            if not a_subs or (len(a_subs) > 1 and tep not in repeatable):
                continue
            b_sub = _resumption_answer(tep, a_subs, resume)
            if b_sub is None:
                fresh = Suboption(tep)
                if not all(is_valid(a_sub, fresh) for a_sub in a_subs):
                    continue
                b_sub = fresh
            answer = build_syn_option(own_gopt, (b_sub,))
            return answer, _negotiated(answer, received, a_subs[-1], b_sub)
    reason = FallbackReason.VACUOUS if received.vacuous else FallbackReason.NO_COMMON_TEP
    return build_syn_option(own_gopt, ()), Fallback(reason)


def _resumption_answer(
    tep: int, a_subs: tuple[Suboption, ...], resume: ResumeAnswer | None
) -> Suboption | None:
    """B's resumption suboption for A's last resumption offer of ``tep``, if the hook agrees."""
    offers = [sub for sub in a_subs if is_resumption_suboption(sub)]
    if resume is None or not offers:
        return None
    answer = resume(offers[-1])
    if answer is not None and (answer.tep != tep or not is_resumption_suboption(answer)):
        raise ValueError(f"resume hook answered {answer!r} to an offer of TEP {tep:#x}")
    return answer


def passive_answer(
    received: SynOption | None,
    supported: Sequence[int],
    *,
    gopt: int = _B_BIT,
    aa_mandatory: bool = False,
    is_valid: IsValid = _DEFAULT_VALIDITY,
    resume: ResumeAnswer | None = None,
    repeatable: frozenset[int] = frozenset(),
) -> SynOption | None:
    """The SYN-form ENO option a passive opener puts in its SYN-ACK, or ``None`` for none.

    See :func:`passive_open`, which also returns the outcome.
    """
    answer, _ = passive_open(
        received,
        supported,
        gopt=gopt,
        aa_mandatory=aa_mandatory,
        is_valid=is_valid,
        resume=resume,
        repeatable=repeatable,
    )
    return answer


def _conflicting_syn_data_option(options: Sequence[tuple[int, bytes]]) -> bool:
    return any(kind == TCP_FAST_OPEN_KIND and data for kind, data in options)


def may_accept_syn_data(
    syn_options: Sequence[tuple[int, bytes]],
    outcome: Negotiated | Fallback | None,
    *,
    syn_data_teps: frozenset[int] = frozenset(),
    conflicting_option: bool = False,
) -> bool:
    """May the data of a received SYN be accepted and ACKed (RFC 8547 §4.7)?

    ``syn_options`` are the SYN's ``(kind, data)`` options. A SYN without any ENO option is
    not a SYN+ENO segment: ENO has no objection (True). For a SYN+ENO segment the data MUST
    be discarded, and not ACKed, if ENO failed or is undecided, the SYN TEP (last TEP in the
    SYN's option) is not the negotiated TEP, the negotiated TEP defines no SYN data (it is
    not in ``syn_data_teps``), or the SYN has a non-empty TCP Fast Open option or another
    ``conflicting_option``. tcpcrypt defines no SYN data, so with the default
    ``syn_data_teps`` the answer for any SYN+ENO is False.
    """
    if not has_eno_option(syn_options):
        return True
    if not isinstance(outcome, Negotiated) or outcome.tep not in syn_data_teps:
        return False
    if conflicting_option or _conflicting_syn_data_option(syn_options):
        return False
    try:
        received = syn_option_from_options(syn_options)
    except ENOParseError:
        return False
    return received is not None and received.syn_tep == outcome.tep


def must_abort_for_syn_data(
    own_syn: SynOption,
    outcome: Negotiated | Fallback,
    *,
    syn_data_acked: bool,
    syn_ack_had_eno: bool,
    allow_unacked: bool = False,
) -> bool:
    """Must a host whose SYN+ENO carried data abort the connection (RFC 8547 §4.7)?

    Call only when the SYN carrying ``own_syn`` had data. Abort if the data was ACKed but the
    SYN TEP is not the negotiated TEP (or ENO failed), or if the SYN-ACK had no ENO option --
    even when the data was not ACKed, unless the non-default ``allow_unacked`` mode is on.
    """
    if not syn_ack_had_eno and (syn_data_acked or not allow_unacked):
        return True
    if syn_data_acked:
        return not isinstance(outcome, Negotiated) or outcome.tep != own_syn.syn_tep
    return False


class ENOEndpoint:
    """TCP-ENO handshake state of one connection end, segment by segment (RFC 8547 §4.6).

    Sans-IO: the flow engine reports every segment it receives from the peer with
    :meth:`on_received` and asks :meth:`option_for_segment` for the ENO option of every
    segment it sends. The endpoint applies:

    * every sent segment carries ENO until ENO is disabled or a non-SYN segment was
      received: the SYN-form option (identical in every SYN and SYN-ACK, retransmissions
      included) on SYN segments, ``45 02`` on others;
    * fallback when a received segment up to and including the first received ACK lacks
      ENO or has a malformed SYN-form option, or the SYN options do not negotiate
      (:func:`negotiate`, :func:`passive_open`); once fallen back it sends no more ENO
      (except the vacuous SYN-form answer of a passive opener on its SYN-ACK
      retransmissions, which §4.6 allows when the SYN had ENO);
    * encryption is on (:attr:`encrypting`) once an ACK carrying ENO was both sent and
      received; B's SYN-ACK counts as a sent ACK with ENO. Before that no application data
      may flow in either form; after it, no plaintext.

    A received SYN-form option that differs from the one first received from the same peer
    (retransmitted SYN, or SYN then SYN-ACK in a simultaneous open) breaks the "MUST NOT
    alter" rule and is handled as malformed while still negotiating.
    """

    def __init__(
        self,
        *,
        local: SynOption | None,
        supported: Sequence[int] = (),
        passive: bool = False,
        gopt: int = _B_BIT,
        aa_mandatory: bool = False,
        is_valid: IsValid = _DEFAULT_VALIDITY,
        resume: ResumeAnswer | None = None,
        repeatable: frozenset[int] = frozenset(),
    ) -> None:
        """Prefer :meth:`active` and :meth:`passive`; ``local`` is None for a passive opener."""
        self.is_passive = passive
        self._supported = tuple(supported)
        self._gopt = gopt
        self._aa_mandatory = aa_mandatory
        self._is_valid = is_valid
        self._resume = resume
        self._repeatable = repeatable
        #: Our SYN-form option (a passive opener's is decided by the received SYN).
        self.local_option: SynOption | None = local
        #: The peer's SYN-form option, once a SYN with ENO was received.
        self.peer_option: SynOption | None = None
        #: ``None`` while the SYN options are not both known, then the outcome.
        self.outcome: Negotiated | Fallback | None = None
        self._received_first_ack = False
        self._received_non_syn = False
        self._sent_ack_with_eno = False
        self._received_ack_with_eno = False

    @classmethod
    def active(
        cls,
        local: SynOption,
        *,
        aa_mandatory: bool = False,
        is_valid: IsValid = _DEFAULT_VALIDITY,
        repeatable: frozenset[int] = frozenset(),
    ) -> ENOEndpoint:
        """An active opener sending ``local`` in its SYN (b=1 only for simultaneous open)."""
        return cls(
            local=local, aa_mandatory=aa_mandatory, is_valid=is_valid, repeatable=repeatable
        )

    @classmethod
    def passive(
        cls,
        supported: Sequence[int],
        *,
        gopt: int = _B_BIT,
        aa_mandatory: bool = False,
        is_valid: IsValid = _DEFAULT_VALIDITY,
        resume: ResumeAnswer | None = None,
        repeatable: frozenset[int] = frozenset(),
    ) -> ENOEndpoint:
        """A passive opener; its SYN-ACK option comes from :func:`passive_open` on the SYN."""
        _passive_gopt(gopt, aa_mandatory)
        return cls(
            local=None,
            supported=supported,
            passive=True,
            gopt=gopt,
            aa_mandatory=aa_mandatory,
            is_valid=is_valid,
            resume=resume,
            repeatable=repeatable,
        )

    @classmethod
    def passive_answered(cls, received: SynOption, answer: SynOption) -> ENOEndpoint:
        """The passive opener :meth:`passive` became on a SYN carrying ``received``, which it
        answered with ``answer``: rebuilt from the two options (the engine's compact
        half-open record keeps them), since only that SYN had been received.

        The answer's only TEP suboption is the one :func:`passive_open` chose, already found
        valid (RFC 8547 §4.5; a resumption answer by the cache hit, RFC 8548 §3.5): the
        outcome pairs it with A's last suboption of that TEP, as :func:`passive_open` did,
        and nothing is negotiated again.
        """
        (b_sub,) = answer.suboptions
        endpoint = cls(local=answer, passive=True)
        endpoint.peer_option = received
        endpoint.outcome = _negotiated(answer, received, received.suboptions_for(b_sub.tep)[-1],
                                       b_sub)
        return endpoint

    @property
    def disabled(self) -> bool:
        """True once ENO fell back to plain TCP."""
        return isinstance(self.outcome, Fallback)

    @property
    def encrypting(self) -> bool:
        """True once encryption MUST be on: TEP negotiated, ACK with ENO sent and received."""
        return (
            isinstance(self.outcome, Negotiated)
            and self._sent_ack_with_eno
            and self._received_ack_with_eno
        )

    @property
    def negotiated(self) -> Negotiated | None:
        """The negotiation result, or ``None`` while negotiating or after a fallback."""
        return self.outcome if isinstance(self.outcome, Negotiated) else None

    def _fall_back(self, reason: FallbackReason) -> None:
        self.outcome = Fallback(reason)

    def on_received(self, *, syn: bool, ack: bool, options: Sequence[tuple[int, bytes]]) -> None:
        """Apply one segment received from the peer: SYN/ACK flags and ``(kind, data)`` options."""
        if self.disabled or self.encrypting:
            self._note_flags(syn, ack)
            return
        checked = not self._received_first_ack
        if syn:
            self._on_syn(options, checked)
        elif checked and not has_eno_option(options):
            self._fall_back(FallbackReason.NO_ENO)
        if ack and not self.disabled and has_eno_option(options):
            self._received_ack_with_eno = True
        self._note_flags(syn, ack)

    def _note_flags(self, syn: bool, ack: bool) -> None:
        self._received_first_ack |= ack
        self._received_non_syn |= not syn

    def _on_syn(self, options: Sequence[tuple[int, bytes]], checked: bool) -> None:
        try:
            received = syn_option_from_options(options)
        except ENOParseError:
            self._fall_back(FallbackReason.MALFORMED)
            return
        if received is None:
            if checked:
                self._fall_back(FallbackReason.NO_ENO)
            return
        if self.peer_option is not None:
            if received.raw != self.peer_option.raw:
                self._fall_back(FallbackReason.MALFORMED)
            return
        self.peer_option = received
        if self.is_passive:
            self.local_option, self.outcome = passive_open(
                received,
                self._supported,
                gopt=self._gopt,
                aa_mandatory=self._aa_mandatory,
                is_valid=self._is_valid,
                resume=self._resume,
                repeatable=self._repeatable,
            )
        elif self.local_option is not None:
            self.outcome = negotiate(
                self.local_option,
                received,
                aa_mandatory=self._aa_mandatory,
                is_valid=self._is_valid,
                repeatable=self._repeatable,
            )

    def option_for_segment(self, *, syn: bool, ack: bool) -> bytes:
        """The ENO option bytes to add to a segment this host sends now (``b""``: none).

        Call once per segment actually sent (retransmissions included): a non-empty option on
        an ACK segment is recorded as "sent an ACK with ENO" (§4.6).
        """
        if syn:
            option = self._syn_form_to_send()
        elif self.disabled or self._received_non_syn:
            option = b""
        else:
            option = NON_SYN_OPTION
        if ack and option and not self.disabled:
            self._sent_ack_with_eno = True
        return option

    def _syn_form_to_send(self) -> bytes:
        if self.local_option is None:
            return b""
        if self.disabled and not (self.is_passive and self.local_option.vacuous):
            return b""
        return self.local_option.raw
