"""The SYN phase, the ENO handshake and the tcpcrypt key exchange (RFC 8547 §4, 8548 §3.3).

Everything from a flow's SYN to its session: :func:`outbound_syn_phase` and
:func:`inbound_syn_phase` take the segments of a flow that is not synchronized yet (SYN,
SYN-ACK, retransmissions, RSTs, the third segment), :func:`half_open_segment` and
:func:`syn_sent_segment` those of the compact records of the SYN phase
(:class:`~tcpcryptd.engine.flow.HalfOpen`, :class:`~tcpcryptd.engine.flow.SynSent`); the
Init1/Init2 exchange (or the resumed session) that follows is :mod:`tcpcryptd.engine.keying`.

* Outbound SYN (we are host A): the SYN-form ENO option is appended, TEPs by preference; the
  option bytes are kept (in the :class:`~tcpcryptd.engine.flow.SynSent` record, then in the
  :class:`~tcpcryptd.core.negotiation.ENOEndpoint` of the flow it is promoted to) so every
  retransmitted SYN carries identical bytes and the transcript is exact (RFC 8547 §4.6, §4.8).
* Inbound SYN with ENO (we are host B): the outbound SYN-ACK gets B's answer, the global
  suboption 0x01 plus one TEP (RFC 8547 §4.5).
* Every RFC 8547 §4.6 fallback condition leaves the connection plain and untouched: a peer
  without ENO, a SYN-ACK whose ENO a middlebox stripped (then A's ACK has no ENO and B falls
  back too), a malformed option, a role clash, no common TEP.  A missing ENO never resets.
* SYN data or a TCP Fast Open option: the flow stays plain (RFC 8547 §4.7, tcpcrypt defines
  no SYN data).  An ENO option that does not fit in the 40 option bytes: the SYN goes plain.
* MSS clamp on ENO flows only: the peer's MSS, as the local stack sees it, is lowered by the
  frame overhead and the padded ``45 02`` option, so local segments still fit once framed.
* Keys are made only when needed (no crypto for a SYN flood): A generates its key pair when
  its third ACK leaves (Init1 rides on it), B when Init1 arrives.
* Session resumption (RFC 8548 §3.5): every session leaves the next session secret in the
  engine's cache (:attr:`~tcpcryptd.engine.context.Context.sessions`, keyed by the peer's
  address; :func:`~tcpcryptd.engine.keying.keys_made`).  A new outbound SYN to a peer with a cached secret takes it
  out of the cache and offers it (:func:`open_active`): the resumption suboption (identifier
  half by the original role, a random nonce) after the other TEPs as fresh offers, the nonce
  as long as the 40 option bytes allow (8 at most; the secret is used once, so a shorter
  nonce never repeats an (ss[i], nonce) pair).  Host B answers with the other half and its own
  nonce when its cache holds that secret for that TEP and peer, taking it out; otherwise the
  offer is answered fresh (a resumption offer implies willingness to do a fresh exchange) and
  the Init messages follow.  A resumed session has no Init messages: both ends make it from
  the secret and the two nonces when encryption turns on (A's third ACK, B's receipt of it),
  and its first frame is at wire offset 0.  A secret offered or answered is gone from the
  cache whatever follows, so none ever secures two connections; a failed attempt leaves
  nothing behind (forward secrecy).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from tcpcryptd.core.constants import ENO_KIND, MAX_RESUME_NONCE_LEN
from tcpcryptd.core.eno import (
    Suboption,
    SynOption,
    build_syn_option,
    has_eno_option,
    make_resumption_suboption,
    parse_resumption,
    parse_syn_option,
)
from tcpcryptd.core.negotiation import (
    ENOEndpoint,
    Fallback,
    FallbackReason,
    ResumeAnswer,
    Role,
    TcpcryptValidity,
)
from tcpcryptd.core.resumption import CacheEntry, new_resumption_nonce
from tcpcryptd.engine.actions import Direction, Result, Transmit, Verdict
from tcpcryptd.engine.context import Context, FlowTable
from tcpcryptd.engine.flow import (
    DEFAULT_MSS,
    MASK32,
    MSS_CLAMP,
    Flow,
    HalfOpen,
    State,
    SynSent,
)
from tcpcryptd.engine.keying import peer_of, resume, start_init1
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, RST, SYN, FlowKey, PacketError, TCPPacket

if TYPE_CHECKING:
    from tcpcryptd.engine.config import EngineConfig

#: Smallest MSS the clamp leaves (RFC 9293 §3.7.1 minimum for IPv4)
_MIN_CLAMPED_MSS = 88
#: The outcome of a SYN without ENO (immutable: one object serves every plain SYN)
_NO_ENO = Fallback(FallbackReason.NO_ENO)


def _options(pkt: TCPPacket) -> list[tuple[int, bytes]] | None:
    try:
        return tcp_options.parse(pkt.options)
    except PacketError:
        return None


def syn_refusal(cfg: EngineConfig, pkt: TCPPacket) -> str | None:
    """Why a SYN must stay plain before any ENO processing, or None (RFC 8547 §4.7)."""
    if not cfg.enabled or not cfg.teps:
        return "disabled"
    if len(pkt.payload):
        return "syn-data"
    try:
        if tcp_options.tfo(pkt.options) is not None:
            return "tcp-fast-open"
    except PacketError:
        return "bad-options"
    return None


def _record_syn(flow: Flow, pkt: TCPPacket, *, local: bool) -> None:
    """Note MSS, window scale (and whether it was sent), SACK-permitted and timestamps of a
    SYN or SYN-ACK."""
    raw = pkt.options
    timestamps = tcp_options.timestamps(raw)
    mss = tcp_options.mss(raw) or DEFAULT_MSS[pkt.version]
    sent = tcp_options.wscale(raw)
    wscale = min(sent or 0, 14)
    if local:
        flow.local_mss, flow.local_wscale = mss, wscale
        flow.local_wscale_sent = sent is not None
        flow.local_sack = tcp_options.sack_permitted(raw)
        flow.local_ts = timestamps is not None
        flow.stack_window = pkt.window
        flow.out_ttl, flow.out_df, flow.out_tos = pkt.ttl, pkt.df, pkt.tos
        if timestamps is not None:
            flow.stack_tsval = timestamps[0]
    else:
        flow.peer_mss, flow.peer_wscale = mss, wscale
        flow.peer_wscale_sent = sent is not None
        flow.peer_sack = tcp_options.sack_permitted(raw)
        flow.peer_ts = timestamps is not None
        flow.peer_window_field = pkt.window
        flow.in_ttl, flow.in_df, flow.in_tos = pkt.ttl, pkt.df, pkt.tos
        if timestamps is not None:
            flow.peer_tsval = timestamps[0]


def _finish_syn_exchange(flow: Flow) -> None:
    """Options in effect once both SYNs were seen (window scale needs both, RFC 7323 §2.2)."""
    both_ws = flow.local_wscale_sent and flow.peer_wscale_sent
    if not both_ws:
        flow.local_wscale = flow.peer_wscale = 0
    flow.sack_ok = flow.local_sack and flow.peer_sack
    flow.ts_ok = flow.local_ts and flow.peer_ts


def _clamp(pkt: TCPPacket, peer_mss: int) -> None:
    """Lower the MSS the local stack sees so its segments fit once framed
    (docs/ARCHITECTURE.md "Packets the engine builds")."""
    pkt.options = tcp_options.set_mss(pkt.options, max(peer_mss - MSS_CLAMP, _MIN_CLAMPED_MSS))


def clamp_mss(flow: Flow | HalfOpen, pkt: TCPPacket) -> None:
    """:func:`_clamp` to the MSS of the peer's SYN."""
    _clamp(pkt, flow.peer_mss)


@lru_cache(maxsize=16)
def _active_syn_option(teps: tuple[int, ...], passive_role: bool = False) -> SynOption:
    """An active opener's SYN-form option for a TEP list: immutable, one object shared by its
    flows.  With ``passive_role`` the global suboption sets b = 1 and the TEPs go in
    increasing priority, as host B lists them (RFC 8547 §4.2, §4.5)."""
    if passive_role:
        return build_syn_option(0x01, [Suboption(tep) for tep in reversed(teps)])
    return build_syn_option(None, [Suboption(tep) for tep in teps])


@lru_cache(maxsize=16)
def _fresh_offers(teps: tuple[int, ...], resumed_tep: int) -> tuple[Suboption, ...]:
    """The fresh TEP suboptions an active opener lists before its resumption offer for
    ``resumed_tep`` (RFC 8548 §3.5), by preference: immutable, shared by its flows."""
    return tuple(Suboption(tep) for tep in teps if tep != resumed_tep)


def _nonce_room(options: bytes, answer: bool, fresh: int) -> int | None:
    """The longest resumption nonce (at most 8 bytes, RFC 8548 §3.5) whose ENO option still
    fits next to ``options``: A's offer after ``fresh`` fresh TEP bytes, or B's answer
    (global suboption first); None if not even an empty one fits."""
    fixed = 2 + fresh + int(answer) + 10    # kind, length, TEP bytes, global, TEP, half
    try:
        length = min(tcp_options.room(options) - fixed, MAX_RESUME_NONCE_LEN)
    except PacketError:
        return None
    return length if length >= 0 else None


def _resumption_offer(ctx: Context, pkt: TCPPacket, now: float
                      ) -> tuple[SynOption, CacheEntry] | None:
    """Host A's SYN option offering the newest cached secret for the peer, with the other
    TEPs fresh before it, and the entry, taken out of the cache; None without a cached
    secret or room for the offer (RFC 8548 §3.5: the resumption suboption names ss[i] by
    this host's original-role half of resume[i])."""
    cache = ctx.sessions
    entry = cache.for_peer(peer_of(pkt.flow_key()), now) if cache is not None else None
    if entry is None:
        return None
    fresh = list(_fresh_offers(ctx.config.teps, entry.tep))
    while (length := _nonce_room(pkt.options, False, len(fresh))) is None:
        if not fresh:
            return None
        fresh.pop()
    cache.take(entry)
    nonce = new_resumption_nonce(length, ctx.config.random)
    return build_syn_option(None, [*fresh, make_resumption_suboption(
        entry.tep, entry.own_half, nonce)]), entry


def open_active(ctx: Context, pkt: TCPPacket, raw: bytes, now: float) -> SynSent | None:
    """An outbound SYN (we are host A; the caller checked :func:`syn_refusal`): our SYN-form
    ENO option appended to ``pkt``'s options, TEPs by preference, and the record of the
    flow (``raw``: the SYN as the stack sent it); None when the option does not fit.

    With a cached secret for the peer the SYN offers resumption (:func:`_resumption_offer`);
    only a resumption answer naming that secret's identifier is valid then (RFC 8548 §3.5).
    """
    passive_role = pkt.sport in ctx.config.passive_role_ports
    offer = None if passive_role else _resumption_offer(ctx, pkt, now)
    if offer is None:
        option, entry = _active_syn_option(tuple(ctx.config.teps), passive_role).raw, None
    else:
        option, entry = offer[0].raw, offer[1]
    try:
        pkt.options = tcp_options.add(pkt.options, option)
    except PacketError:
        return None
    return SynSent(pkt.flow_key(), raw, option, pkt.seq, entry, now)


def promote_syn_sent(record: SynSent) -> Flow:
    """The :class:`Flow` a :class:`SynSent` record stands for, as the SYN would have made
    it, with the record's times and SYN count: the ENO endpoint of our option (valid
    answers to a resumption offer name its secret, RFC 8548 §3.5) and the options of the
    stack's SYN (:func:`_record_syn`)."""
    entry = record.resume_entry
    local = parse_syn_option(record.syn_option)
    eno = (ENOEndpoint.active(local) if entry is None else
           ENOEndpoint.active(local, is_valid=TcpcryptValidity(resume_id=entry.resume_id)))
    flow = Flow(record.key, Role.A, eno, record.created)
    flow.resume_entry = entry
    flow.local_isn = record.local_isn
    _record_syn(flow, TCPPacket.parse(record.syn), local=True)
    flow.syn_sends = record.syn_sends
    flow.last_activity = record.last_activity
    return flow


def add_syn_option(flow: Flow | SynSent, pkt: TCPPacket) -> bool:
    """Append our SYN-form ENO option to an outbound SYN or SYN-ACK; False if it cannot.

    Without an ENO endpoint (a :class:`SynSent` record has none yet; once the session
    exists it is gone) the segment carries the same option bytes as before, kept in
    ``flow.syn_option`` (a SYN-ACK retransmitted after the session exists).
    """
    eno = flow.eno
    option = (flow.syn_option if eno is None
              else eno.option_for_segment(syn=True, ack=bool(pkt.flags & ACK)))
    if not option:
        return False
    try:
        pkt.options = tcp_options.add(pkt.options, option)
    except PacketError:
        return False
    return True


def offer_declined(ctx: Context, flow: Flow | SynSent) -> None:
    """The peer did not resume the secret our SYN offered: it is dropped (counted
    ``resume_declined``), the fresh exchange follows, and it is never offered again
    (RFC 8548 §3.5)."""
    if flow.resume_entry is not None:
        flow.resume_entry = None
        ctx.count("resume_declined")


def on_syn_ack(ctx: Context, flow: Flow, pkt: TCPPacket, now: float) -> Fallback | None:
    """Host A receives the SYN-ACK: negotiate (RFC 8547 §4.5, §4.6); clamp its MSS.  An
    offered secret the peer did not resume is dropped (:func:`offer_declined`)."""
    opts = _options(pkt)
    if opts is None:
        return Fallback(FallbackReason.MALFORMED)
    flow.eno.on_received(syn=True, ack=True, options=opts)
    if not (flow.eno.negotiated and flow.eno.negotiated.resumed):
        offer_declined(ctx, flow)
    if flow.eno.negotiated is None:
        return flow.eno.outcome if isinstance(flow.eno.outcome, Fallback) else Fallback(
            FallbackReason.NO_ENO)
    flow.negotiated = flow.eno.negotiated
    flow.role = flow.negotiated.role
    flow.tep = flow.negotiated.tep
    flow.peer_isn = pkt.seq
    _record_syn(flow, pkt, local=False)
    _finish_syn_exchange(flow)
    # host B of a simultaneous open: its SYN-ACK and the peer's carried ENO, so encryption
    # is on (RFC 8547 §4.6) and host A's Init1 comes next
    flow.state = State.KEYING if flow.role is Role.B else State.NEGOTIATED
    flow.syn_rtt = _syn_rtt(flow, now)
    clamp_mss(flow, pkt)
    return None


def on_simultaneous_syn(ctx: Context, flow: Flow, pkt: TCPPacket) -> Fallback | None:
    """The peer's SYN (no ACK) reaches a flow in syn-sent: a simultaneous open, both hosts
    active openers (RFC 8547 §4.5, §4.6).  The SYNs' b bits decide the roles: the host that
    set b = 1 (``EngineConfig.passive_role_ports``) is host B, and the negotiation is the
    usual one on the two SYN options; both b = 0 (or both 1) is a role conflict and the
    connection stays plain (counted ``fallback_simultaneous-open``).  Each stack then
    answers with a SYN-ACK carrying its host's unchanged SYN option (§4.6)."""
    opts = _options(pkt)
    if opts is None:
        return Fallback(FallbackReason.MALFORMED)
    flow.eno.on_received(syn=True, ack=False, options=opts)
    negotiated = flow.eno.negotiated
    if negotiated is None:
        outcome = flow.eno.outcome
        if not isinstance(outcome, Fallback) or outcome.reason is FallbackReason.ROLE_CONFLICT:
            return Fallback(FallbackReason.SIMULTANEOUS_OPEN)
        return outcome
    if not negotiated.resumed:
        offer_declined(ctx, flow)
    flow.negotiated = negotiated
    flow.role = negotiated.role
    flow.tep = negotiated.tep
    flow.peer_isn = pkt.seq
    _record_syn(flow, pkt, local=False)
    return None


def _negotiate_passive(cfg: EngineConfig, pkt: TCPPacket, resume: ResumeAnswer | None
                       ) -> ENOEndpoint | Fallback:
    """Host B's ENO endpoint after the peer's SYN, negotiated, or why it stays plain;
    ``resume`` answers a resumption offer (RFC 8548 §3.5)."""
    opts = _options(pkt)
    if opts is None:
        return Fallback(FallbackReason.MALFORMED)
    if not has_eno_option(opts):
        return _NO_ENO   # the endpoint would fall back at once (RFC 8547 §4.6 item 1)
    # B lists TEPs in increasing priority: our most preferred goes last (RFC 8547 §4.5)
    eno = ENOEndpoint.passive(tuple(reversed(cfg.teps)), resume=resume)
    eno.on_received(syn=True, ack=False, options=opts)
    if eno.negotiated is None:
        return eno.outcome if isinstance(eno.outcome, Fallback) else Fallback(
            FallbackReason.NO_ENO)
    return eno


def _passive_flow(key: FlowKey, syn: TCPPacket, eno: ENOEndpoint, now: float) -> Flow:
    """Host B's :class:`Flow` for the peer's SYN, whose option ``eno`` negotiated."""
    negotiated = eno.negotiated
    assert negotiated is not None
    flow = Flow(key, Role.B, eno, now)
    flow.negotiated = negotiated
    flow.tep = negotiated.tep
    flow.peer_isn = syn.seq
    _record_syn(flow, syn, local=False)
    return flow


def _resume_answer(ctx: Context, pkt: TCPPacket, now: float, taken: list[CacheEntry]
                   ) -> ResumeAnswer | None:
    """Host B's answer to a resumption offer (RFC 8548 §3.5): when the cache holds the
    secret the offer's identifier half names, for this TEP and this peer, the other half
    and a fresh nonce (the entry is taken out of the cache and appended to ``taken``);
    otherwise None (counted ``resume_miss``), and the TEP is answered fresh."""
    cache = ctx.sessions
    if cache is None:
        return None

    def answer(offer: Suboption) -> Suboption | None:
        parsed = parse_resumption(offer)
        entry = None if parsed is None else cache.by_peer_half(parsed[0], offer.tep, now)
        length = (None if entry is None or entry.peer != peer_of(pkt.reverse_flow_key())
                  else _nonce_room(tcp_options.remove(pkt.options, ENO_KIND), True, 0))
        if length is None:
            ctx.count("resume_miss")
            return None
        cache.take(entry)
        taken.append(entry)
        return make_resumption_suboption(offer.tep, entry.own_half,
                                         new_resumption_nonce(length, ctx.config.random))
    return answer


def open_half_open(ctx: Context, pkt: TCPPacket, raw: bytes, now: float
                   ) -> HalfOpen | Fallback:
    """An inbound SYN (we are host B), kept as a compact record.

    The same negotiation decides (RFC 8547 §4.5, §4.6); only B's answer option and the TEP
    are kept of it, with the SYN itself (``raw``, unmodified), and the cached secret the
    answer resumes (:func:`_resume_answer`): :func:`promote` builds the :class:`Flow` from
    them when the peer's third segment arrives.  The SYN-ACK, which does not exist yet,
    carries the options the SYN offered (Linux answers with a subset), so B's answer is
    sized against the SYN's options.
    """
    taken: list[CacheEntry] = []
    eno = _negotiate_passive(ctx.config, pkt, _resume_answer(ctx, pkt, now, taken))
    if isinstance(eno, Fallback):
        return eno
    assert eno.negotiated is not None and eno.local_option is not None
    record = HalfOpen(pkt.reverse_flow_key(), raw, eno.local_option.raw, eno.negotiated.tep,
                      pkt.seq, now)
    if eno.negotiated.resumed:
        record.resume_entry = taken[0]
    _clamp(pkt, tcp_options.mss(pkt.options) or DEFAULT_MSS[pkt.version])   # the SYN's own
    return record


def half_open_syn_ack(record: HalfOpen, pkt: TCPPacket, raw: bytes, now: float) -> bool:
    """:func:`on_local_syn_ack` for a record: the SYN-ACK is kept, B's answer added."""
    record.syn_ack = raw
    record.syn_sends += 1
    if record.syn_sends == 1:
        record.syn_time = now
    try:
        pkt.options = tcp_options.add(pkt.options, record.syn_option)
    except PacketError:
        return False
    return True


def promote(record: HalfOpen) -> Flow:
    """The :class:`Flow` a record stands for, as the SYN and the stack's latest SYN-ACK
    (:func:`on_local_syn_ack`, whose ENO answer counts as sent on an ACK, RFC 8547 §4.6)
    would have made it, with the record's times, SYN-ACK count and stale flow.

    The passive negotiation is not run again (for a resumption offer it could not be: the
    cache entry is taken): the record's answer and the SYN's option rebuild the ENO endpoint
    (:meth:`~tcpcryptd.core.negotiation.ENOEndpoint.passive_answered`).  The SYN left
    clamped and the SYN-ACK with B's answer: neither is rewritten again.
    """
    syn = TCPPacket.parse(record.syn)
    (received,) = tcp_options.eno_options(syn.options)
    eno = ENOEndpoint.passive_answered(parse_syn_option(received),
                                       parse_syn_option(record.syn_option))
    # the same options negotiated this TEP when the record was made
    assert eno.negotiated is not None and eno.negotiated.tep == record.tep, eno.outcome
    flow = _passive_flow(record.key, syn, eno, record.created)
    flow.resume_entry = record.resume_entry
    if record.syn_ack is not None:
        _local_syn_ack(flow, TCPPacket.parse(record.syn_ack), record.syn_time)
        flow.eno.option_for_segment(syn=True, ack=True)
        flow.syn_sends = record.syn_sends
    flow.syn_time = record.syn_time
    flow.last_activity = record.last_activity
    flow.stale = record.stale
    return flow


def _local_syn_ack(flow: Flow, pkt: TCPPacket, now: float) -> None:
    """What host B notes of its stack's SYN-ACK."""
    flow.local_isn = pkt.seq
    _record_syn(flow, pkt, local=True)
    _finish_syn_exchange(flow)
    flow.syn_sends += 1
    if flow.syn_sends == 1:
        flow.syn_time = now


def on_local_syn_ack(flow: Flow, pkt: TCPPacket, now: float) -> bool:
    """Host B's stack answers the SYN: add B's ENO answer; False if it does not fit."""
    _local_syn_ack(flow, pkt, now)
    return add_syn_option(flow, pkt)


def on_first_ack(ctx: Context, flow: Flow, pkt: TCPPacket, now: float, result: Result
                 ) -> Fallback | None:
    """Host B receives A's first non-SYN segment: it must carry ENO (RFC 8547 §4.6).  With
    it encryption is on: a resumed session exists at once (:func:`resume`), a fresh one
    waits for Init1."""
    opts = _options(pkt) or []
    flow.eno.on_received(syn=False, ack=bool(pkt.flags & ACK), options=opts)
    if isinstance(flow.eno.outcome, Fallback):
        return flow.eno.outcome
    if flow.eno.encrypting:
        flow.state = State.KEYING
        flow.syn_rtt = _syn_rtt(flow, now)
        if flow.resume_entry is not None:
            resume(ctx, flow, now, result)
    return None


def _syn_rtt(flow: Flow, now: float) -> float | None:
    """The handshake's RTT sample for the Init retransmission timer, or None when our SYN or
    SYN-ACK was retransmitted: the answer may be to any copy (Karn, RFC 6298 §3), and a
    sample from the first copy of a SYN sent 5 times is 15 s, an RTO of 45 s: Init1 lost
    once more and the handshake timed out. Without a sample the RTO starts at
    ``initial_rto``."""
    return now - flow.syn_time if flow.syn_sends == 1 else None


# -- the SYN phase, segment by segment --------------------------------------------------

def outbound_syn_phase(ctx: Context, table: FlowTable, flow: Flow, pkt: TCPPacket, now: float,
                       result: Result) -> bool:
    """A segment of the local stack on a flow not yet past the SYN phase: its SYNs and
    SYN-ACKs (any state), and what it sends in syn-sent or syn-received.  False when the
    segment is not the SYN phase's (the outbound path takes it)."""
    flags = pkt.flags
    if flags & SYN:
        retransmitted_syn = (pkt.seq == flow.local_isn and flow.role is Role.A
                             and flow.state in (State.SYN_SENT, State.NEGOTIATED))
        if not flags & ACK and not retransmitted_syn:
            # the stack opens a new connection on a tracked 4-tuple: whatever it kept of
            # the old one is gone (a socket in TIME-WAIT sends no SYN), so the old flow
            # is replaced outright, never mixed with the new one (RFC 9293 §3.10.7.4)
            ctx.count(f"replaced_{flow.state}")
            table.forget(flow, result, restore=False)
            new = table.open_flow(pkt, True, now)
            result.verdict, result.data, result.plain = new.verdict, new.data, new.plain
            result.events.extend(new.events)
            return True
        if retransmitted_syn and not flags & ACK:
            add_syn_option(flow, pkt)  # identical bytes on every retransmission
            flow.syn_sends += 1
        elif flow.closed_at is not None:
            # a SYN-ACK on an ended flow: the stack accepted a new connection that the
            # engine left plain (its SYN had no ENO), or repeats one of the old one
            if pkt.ack == (flow.peer_isn + 1) & MASK32:
                ctx.count("drops_stale-syn-ack")
                result.verdict = Verdict.DROP
                return True
            ctx.count(f"replaced_{flow.state}")
            table.forget(flow, result, restore=False)
            result.verdict, result.plain = Verdict.ACCEPT, True
            return True
        elif pkt.ack != (flow.peer_isn + 1) & MASK32:
            # the stack answers a SYN the flow does not stand for (an older one on the
            # 4-tuple): never with this flow's ENO answer nor its numbers
            ctx.count("drops_stale-syn-ack")
            result.verdict = Verdict.DROP
            return True
        elif flow.eno is not None and not flow.eno.is_passive:
            # simultaneous open: the stack's SYN-ACK carries our SYN option unchanged
            # (RFC 8547 §4.6), which counts as an ACK sent with ENO
            _finish_syn_exchange(flow)
            add_syn_option(flow, pkt)
        elif flow.role is Role.B and flags & ACK and flow.state is not State.SYN_RECEIVED:
            # a SYN-ACK retransmitted after the peer's ACK arrived: the stack missed that
            # ACK (local loss); same ENO bytes to the wire, and a fresh ACK to the stack
            add_syn_option(flow, pkt)
            flow.stack_seen_ack = None
            result.transmit.append(Transmit(flow.local_packet(flow.dl_sent, 0),
                                            Direction.INBOUND))
        elif flow.state is State.SYN_RECEIVED and flags & ACK:
            if not on_local_syn_ack(flow, pkt, now):
                table.forget(flow, result)
                table.plain("option-space", result)
                return True
        if len(pkt.payload):
            pkt.payload = b""   # no SYN data on an ENO flow (RFC 8547 §4.7), never plaintext
            ctx.count("drops_syn-data")
        result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
        return True
    if flow.state in (State.SYN_SENT, State.SYN_RECEIVED):
        if flags & RST:
            # In SYN-SENT the stack sends RSTs only in answer to segments that do not
            # belong to its connection attempt (RFC 9293 §3.10.7.3); it gives up an
            # attempt silently.  In SYN-RECEIVED it drops the connection with a RST that
            # answers the SYN (ACK = the peer's ISN + 1) or starts at its own ISN + 1.
            if flow.state is State.SYN_RECEIVED and (
                    (flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32)
                    or (flow.syn_sends and pkt.seq == (flow.local_isn + 1) & MASK32)):
                table.forget(flow, result)
            result.verdict = Verdict.ACCEPT
        elif len(pkt.payload) or flags & FIN:
            ctx.count("drops_before-established")   # never plaintext on an ENO flow
            result.verdict = Verdict.DROP
        else:
            result.verdict = Verdict.ACCEPT
        return True
    return False


def inbound_syn_phase(ctx: Context, table: FlowTable, flow: Flow, pkt: TCPPacket, now: float,
                      result: Result) -> bool:
    """A segment of the peer on a flow not yet past the SYN phase: its SYNs and SYN-ACKs
    (any state), what it sends in syn-sent, and in syn-received its first ACK, which
    decides ENO (RFC 8547 §4.6).  False when the inbound path takes the segment."""
    flags = pkt.flags
    if flags & SYN:
        if flags & RST:
            ctx.count("drops_syn-rst")
            result.verdict = Verdict.DROP
            return True
        if flags & ACK:
            if flow.closed_at is not None:
                ctx.count("drops_stale-syn-ack")   # an old duplicate: nothing to answer
                result.verdict = Verdict.DROP
                return True
            if flow.state is State.SYN_SENT:
                if pkt.ack != (flow.local_isn + 1) & MASK32:
                    # not an answer to our SYN: the stack resets it (RFC 9293 §3.10.7.3)
                    # and the flow waits for the real SYN-ACK
                    result.verdict = Verdict.ACCEPT
                    return True
                simultaneous = flow.negotiated is not None   # the peer's SYN came first
                fallback = on_syn_ack(ctx, flow, pkt, now)
                if fallback is not None:
                    table.fall_back(flow, fallback, result)
                    return True
                flow.stack_seen_ack = 0
                flow.stack_seen_window = flow.peer_window_field
                if simultaneous and flow.role is Role.A:
                    # host A of a simultaneous open: its stack owes no third segment to
                    # carry Init1 (both SYNs are acknowledged by the SYN-ACKs): the engine
                    # sends it now, with its own retransmission
                    result.transmit.extend(flow.wire_pieces(0, start_init1(ctx, flow, now)))
            else:
                clamp_mss(flow, pkt)
        elif flow.state is State.SYN_SENT and pkt.seq != flow.peer_isn:
            fallback = on_simultaneous_syn(ctx, flow, pkt)
            if fallback is not None:
                table.fall_back(flow, fallback, result)
                return True
            clamp_mss(flow, pkt)
        elif pkt.seq == flow.peer_isn and flow.role is Role.B:
            if flow.closed_at is not None:
                # an old duplicate of the ended connection's SYN (no higher ISN: a
                # TIME-WAIT stack would not take it either, RFC 9293 §3.10.7.4)
                ctx.count("drops_old-syn")
                result.verdict = Verdict.DROP
                return True
            clamp_mss(flow, pkt)   # a retransmitted or duplicated SYN: the stack answers
        elif flow.closed_at is not None or flow.state is State.SYN_RECEIVED:
            table.replace_inbound(flow, pkt, now, result)
            return True
        else:
            # a SYN with another ISN on a synchronized connection: the stack answers it
            # with a challenge ACK (RFC 5961 §4), translated like any of its ACKs
            clamp_mss(flow, pkt)
        result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
        return True
    if flow.state is State.SYN_SENT:
        if flags & RST:
            # RFC 9293 §3.10.7.3: in SYN-SENT only a RST whose ACK acknowledges our SYN
            # is acceptable; any other is dropped (the stack would drop it too), and the
            # flow must not be forgotten for it
            if not (flags & ACK and pkt.ack == (flow.local_isn + 1) & MASK32):
                ctx.count("drops_rst-unacceptable")
                result.verdict = Verdict.DROP
                return True
            table.forget(flow, result)
        elif (flow.negotiated is not None and flags & ACK
              and pkt.ack == (flow.local_isn + 1) & MASK32):
            # a simultaneous open only we saw (the peer got our SYN-ACK as the answer to
            # its SYN, before our SYN): its ACK of our SYN-ACK decides ENO as host B's first
            # ACK does (RFC 8547 §4.6), whichever role the b bits gave us
            if _deciding_ack(ctx, table, flow, pkt, now, result):
                return True
            if flow.role is Role.A:
                result.transmit.extend(flow.wire_pieces(0, start_init1(ctx, flow, now)))
            return False
        elif len(pkt.payload) or flags & FIN:
            # the peer's Init1 after a simultaneous open, ahead of its SYN-ACK: never to
            # the stack; the peer sends it again (its retransmission timer)
            ctx.count("drops_before-established")
            result.verdict = Verdict.DROP
            return True
        result.verdict = Verdict.ACCEPT
        return True
    if flow.state is State.SYN_RECEIVED:
        if flags & RST:
            syn_received_rst(ctx, table, flow, pkt, result)
            return True
        return _deciding_ack(ctx, table, flow, pkt, now, result)
    return False


def _deciding_ack(ctx: Context, table: FlowTable, flow: Flow, pkt: TCPPacket, now: float,
                  result: Result) -> bool:
    """The peer's first ACK of our SYN-ACK decides ENO (RFC 8547 §4.6): True when handled
    here (the connection fell back, or the segment is dropped because the flow is still
    waiting for an acceptable ACK); False: encryption is on, the segment goes on."""
    waiting = flow.state
    fallback = on_first_ack(ctx, flow, pkt, now, result)
    if fallback is not None:
        table.fall_back(flow, fallback, result)
        return True
    if flow.state is waiting:
        ctx.count("drops_before-ack")
        result.verdict = Verdict.DROP
        return True
    return False


def half_open_segment(ctx: Context, table: FlowTable, record: HalfOpen, pkt: TCPPacket,
                      raw: bytes, outbound: bool, now: float, result: Result) -> bool:
    """A segment on a :class:`HalfOpen` record, handled as the functions above handle it on
    a syn-received :class:`Flow`; False when the segment needs the flow itself (the peer's
    third segment, anything unusual): the caller promotes the record and runs the usual
    path.  A flood's retransmitted SYNs, RSTs and the stack's SYN-ACKs are answered from
    the record and never promote it."""
    if record.stale is not None:
        return False
    flags = pkt.flags
    if outbound:
        if flags & (SYN | ACK | RST) != SYN | ACK or pkt.ack != (record.peer_isn + 1) & MASK32:
            return False
        if not half_open_syn_ack(record, pkt, bytes(raw), now):
            table.forget(record, result)
            table.plain("option-space", result)
            return True
        if len(pkt.payload):
            pkt.payload = b""   # no SYN data on an ENO flow (RFC 8547 §4.7)
            ctx.count("drops_syn-data")
        result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
        return True
    if flags & SYN:
        if flags & RST:
            ctx.count("drops_syn-rst")
            result.verdict = Verdict.DROP
        elif flags & ACK or pkt.seq == record.peer_isn:
            clamp_mss(record, pkt)
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
        else:
            table.replace_inbound(record, pkt, now, result)
        return True
    if flags & RST:
        syn_received_rst(ctx, table, record, pkt, result)
        return True
    return False


def syn_sent_segment(ctx: Context, table: FlowTable, record: SynSent, pkt: TCPPacket,
                     outbound: bool, now: float, result: Result) -> bool:
    """A segment on a :class:`SynSent` record, handled as the functions above handle it on
    a syn-sent :class:`Flow`; False when the segment needs the flow itself (a SYN-ACK that
    answers our SYN with an ENO option or a malformed option list, the peer's SYN or the
    stack's SYN-ACK of a simultaneous open): the caller promotes the record and runs the
    usual path.  The stack's SYNs and other segments, the peer's RSTs, its other segments
    and a SYN-ACK without ENO (the connection falls back, RFC 8547 §4.6) are answered from
    the record and never promote it."""
    flags = pkt.flags & (SYN | ACK | RST)
    if outbound:
        return flags & (SYN | ACK) != SYN | ACK and outbound_syn_phase(
            ctx, table, record, pkt, now, result)   # type: ignore[arg-type]
    if flags == SYN:
        return False
    if flags == SYN | ACK and pkt.ack == (record.local_isn + 1) & MASK32:
        try:
            if tcp_options.eno_options(pkt.options):
                return False
        except PacketError:
            return False    # a malformed option list: on_syn_ack's fallback
        # what on_syn_ack decides on a flow for a SYN-ACK without ENO
        offer_declined(ctx, record)
        table.fall_back(record, _NO_ENO, result)
        return True
    return inbound_syn_phase(ctx, table, record, pkt, now, result)   # type: ignore[arg-type]


def syn_received_rst(ctx: Context, table: FlowTable, flow: Flow | HalfOpen, pkt: TCPPacket,
                     result: Result) -> None:
    """A RST before the peer's first ACK (a syn-received flow or its record).

    The stack's numbers are the wire's until then: it checks the RST against its own
    window.  Out of the window it is dropped here too; the flow is forgotten only for the
    RST at exactly the peer's ISN + 1 (which any stack takes); an in-window one may only
    make the stack challenge (RFC 5961 §3.2).
    """
    offset = (pkt.seq - flow.peer_isn - 1) & MASK32
    window = flow.stack_window if flow.syn_sends else 0xFFFF
    if offset >= max(window, 1):
        ctx.count("drops_rst-out-of-window")
        result.verdict = Verdict.DROP
        return
    if offset == 0:
        table.forget(flow, result)
    result.verdict = Verdict.ACCEPT
