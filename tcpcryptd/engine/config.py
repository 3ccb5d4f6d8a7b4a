"""Engine configuration (docs/ARCHITECTURE.md "Layer 3")."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from tcpcryptd.core.constants import DEFAULT_MAX_INIT_LEN, TEP, AEADId
from tcpcryptd.engine.policy import Policy


@dataclass(frozen=True)
class EngineConfig:
    """Policy, algorithms and limits of one :class:`~tcpcryptd.engine.engine.Engine`."""

    #: encrypt new flows (off: every new flow is left plain; existing ones continue)
    enabled: bool = True
    #: skip / prefer / require per connection (engine/policy.py)
    policy: Policy = Policy()
    #: TEPs offered in our SYNs, most preferred first (as host A); as host B we pick the first
    #: of this list the peer offered (RFC 8547 §4.5: B lists the chosen TEP last = alone)
    teps: tuple[int, ...] = (TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448, TEP.ECDHE_P256)
    #: sym_cipher list A offers in Init1 (RFC 8548 §4.1)
    aeads: tuple[int, ...] = (AEADId.AES_128_GCM, AEADId.AES_256_GCM, AEADId.CHACHA20_POLY1305)
    #: B's preference in increasing priority (RFC 8548 §3.3): AES-128-GCM most preferred
    aead_preference: tuple[int, ...] = (AEADId.CHACHA20_POLY1305, AEADId.AES_256_GCM,
                                        AEADId.AES_128_GCM)
    #: bound on an Init message's message_len (README.md "Readings of the RFCs")
    max_init_len: int = DEFAULT_MAX_INIT_LEN
    #: flows tracked at once; a new SYN beyond it is left plain (counted)
    max_flows: int = 65536
    #: of those, passive ENO flows before the peer's third segment (syn-received: what a SYN
    #: flood creates; ~0.8 KB each); an ENO SYN beyond it is left plain (counted
    #: ``plain_half-open-limit``).  4096: Linux's default accept backlog (somaxconn) and about
    #: the SYN queue a listener keeps before it answers with SYN cookies, so a legitimate
    #: host rarely has more handshakes in flight; the flood's share of memory stays ~3.5 MB.
    max_half_open: int = 4096
    #: local packets held per flow while keys are not ready; beyond: dropped (kernel resends)
    max_held_packets: int = 16
    #: bytes buffered per flow (out-of-order wire bytes + plaintext not yet taken by the stack)
    max_buffered_bytes: int = 1 << 20
    #: a flow nobody sent on for this long is forgotten (encrypted ones are aborted first)
    idle_timeout: float = 7200.0
    #: a flow still in its handshake this long after its SYN is forgotten; one whose Init
    #: messages did not complete by then is aborted (held packets must not wait forever)
    handshake_timeout: float = 75.0
    #: TIME-WAIT-like linger after both FINs or a RST (numbers still translated) ...
    linger: float = 60.0
    #: ... then a tombstone: state freed, the 4-tuple's segments dropped (never passed as
    #: plaintext), until the flow is forgotten
    tombstone: float = 600.0
    #: at most one challenge ACK per flow per this many seconds, in answer to a RST (or a
    #: SYN) inside the receive window but not at its exact start, or to an ACK of bytes
    #: never sent (RFC 5961 §3.2, §4, §7; Linux's per-socket limit is 0.5 s as well)
    challenge_ack_interval: float = 0.5
    #: retransmission timer of injected bytes (RFC 6298): initial, lower and upper bound
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    #: give up after this many retransmissions of injected bytes -> abort both sides
    max_retransmits: int = 8
    #: retransmission timer toward the local stack for plaintext it has not acknowledged
    local_rto: float = 0.2
    #: an encrypted flow that saw no packet for this long releases its AEAD objects (OpenSSL
    #: contexts, ~2.4 KB each, two per flow: most of an idle flow's memory) and keeps only
    #: the raw traffic keys; the next frame rebuilds the one it needs (~1 us).  5 s: well
    #: above the gaps inside a transfer or a request/response exchange, so busy flows never
    #: pay the rebuild, and short enough that idle flows shed the memory soon.  The check
    #: costs one timer event per flow every 5 s at most.  0 keeps the objects for good.
    aead_idle_release: float = 5.0
    #: rekeying (RFC 8548 §3.8): a new key generation starts with the next new data once the
    #: frames sealed under the current one reach this many wire bytes (0: no byte limit).
    #: 1 GiB: far below what AES-GCM or ChaCha20-Poly1305 may seal under one key with
    #: counter nonces, and rare enough that its cost (one key derivation, one empty frame
    #: from the peer) does not show in a transfer
    rekey_bytes: int = 1 << 30
    #: ... or once the current generation is this many seconds old (0: no time limit), so
    #: keys that decrypt a long-lived connection's past traffic are wiped (§3.8)
    rekey_interval: float = 3600.0
    #: local ports whose outbound SYNs set the passive role bit b = 1 (RFC 8547 §4.2: the
    #: setting an active opener needs for a simultaneous open, where both hosts open actively
    #: and one of them must be host B); a SYN with b = 1 to a listening peer falls back
    #: (role-conflict), so list only ports used for simultaneous opens, on one of the hosts
    passive_role_ports: frozenset[int] = frozenset()
    #: session resumption (RFC 8548 §3.5): after a session both ends cache the next session
    #: secret for the peer, and a later connection between the two offers it in its SYN
    #: (no Init messages, no key agreement); off: neither offered nor accepted
    resumption_enabled: bool = True
    #: cached secrets at most (one per finished session, several per peer possible); the
    #: least recently used goes first
    resumption_cache_size: int = 1024
    #: seconds a cached secret may be resumed; then it is wiped (it is the bound on how long
    #: a stolen memory image could decrypt the next session: forward secrecy, §3.5, §8)
    resumption_lifetime: float = 3600.0
    #: the random source of the key exchange: ``random(n)`` returns n random bytes, for the
    #: ephemeral key pairs, the nonces N_A/N_B (RFC 8548 §3.3) and the resumption nonces
    #: (§3.5); the sans-IO engine takes
    #: randomness only from here (tests pass a seeded generator)
    random: Callable[[int], bytes] = os.urandom
