"""The daemon's firewall: iptables/ip6tables queue chains plus one nftables table.

Placement (measured on this kernel): conntrack must see the wire view of a flow, so outbound
packets are queued in ``raw OUTPUT`` (before conntrack) and inbound ones in ``mangle INPUT``
(after it). Both see the local stack's view of a connection's addresses and ports: outbound
before the host's own NAT (POSTROUTING, OUTPUT's nat chain), inbound after it (PREROUTING's
nat chain undoes a source NAT of the host's connection and applies a port forward or
REDIRECT to the host), so a connection the host itself translates has one 4-tuple in both
directions. The queue is an iptables target; two chains, the same for IPv4 and IPv6::

    raw    OUTPUT -> TCPCRYPT_OUT    queue local -> wire (with --queue-bypass);
                                     NOTRACK for packets injected toward the local stack
    mangle INPUT  -> TCPCRYPT_IN     queue wire -> local; encrypted connections WITHOUT
                                     bypass

Each jump is taken only by TCP packets without ``marks.plain``: the nftables table marks the
packets of offloaded plain connections just before these hooks, so such a packet costs the
one jump rule here (:func:`_jump_rule`).

With several workers (``queue.workers``) worker ``k`` reads queue ``queue.number + k``;
one rule per worker sends it the connections whose symmetric hash of addresses and ports
falls in its bucket (:func:`spread_program`, a classic BPF program in an ``-m bpf`` match),
so both directions of a connection reach the same worker and connections between one pair
of hosts spread over all of them (the kernel's ``--queue-balance`` hashes the addresses and
protocol only). The bypass rules are the single queue's, per worker: while a worker is down
(its supervisor restarts it) inbound packets of encrypted connections are dropped, outbound
ones pass unseen and the guard resets them; plain connections go on.

Loopback, configured ports and packets the daemon injected itself (``marks.injected``, set
with SO_MARK) are skipped; packets the host forwards never cross either hook. Inbound,
the connmark ``marks.encrypted`` is copied into the nfmark so the daemon knows a packet's
connection is encrypted even when it has no flow for it.

Which connections are offloaded, which are encrypted, and the guard that drops what must
never pass without the daemon are the nftables table's (:mod:`tcpcryptd.daemon.nftables`).

Install: the table, then one ``iptables-restore --noflush`` per family (each atomic),
idempotent, with iptables-nft or iptables-legacy. Remove: the iptables chains, then the table
unless conntrack still holds an encrypted connection or the table's ``@enc`` sets one that
conntrack does not track (the guard outlives the daemon).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from tcpcryptd.daemon import nftables
from tcpcryptd.daemon.conntrack import encrypted_connections
from tcpcryptd.daemon.errors import FirewallError
from tcpcryptd.daemon.nftables import OffloadSpec

CHAIN_OUT = "TCPCRYPT_OUT"
CHAIN_IN = "TCPCRYPT_IN"

#: (table, built-in chain, own chain): where each own chain is jumped to from.
JUMPS: tuple[tuple[str, str, str], ...] = (
    ("raw", "OUTPUT", CHAIN_OUT),
    ("mangle", "INPUT", CHAIN_IN),
)
TABLES = ("raw", "mangle")
#: iptables' multiport match takes at most 15 ports per rule.
MULTIPORT_MAX = 15
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class RuleSpec:
    """What the rules depend on (from the config and the ``--queue`` option)."""

    queue_num: int
    offload: OffloadSpec
    workers: int = 1

    @property
    def skip_ports(self) -> tuple[int, ...]:
        """``firewall.skip_ports``: held once, in the table's spec (its guard exempts them)."""
        return self.offload.skip_ports


# classic BPF (linux/filter.h): the instruction classes, sizes, modes and operations used
_LD, _LDX, _ST, _ALU, _JMP, _RET = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MEM, _MSH = 0x20, 0x40, 0x60, 0xA0
_XOR_X, _MUL_K, _RSH_K, _MOD_K, _JEQ_K = 0xA8, 0x20, 0x70, 0x90, 0x10
#: the multiplier that mixes the folded tuple (2^32 / golden ratio)
_MIX = 0x9E3779B1


def spread_program(family: int, bucket: int, buckets: int) -> str:
    """``-m bpf --bytecode`` text matching the TCP packets of one worker's bucket.

    The hash XORs the two addresses and the two ports (so it is the same in both
    directions), mixes the result by a multiplication and takes its upper half modulo
    ``buckets``. The program sees the packet from its IP header: IPv4 finds the ports after
    a header of any length (``4*([0]&0xf)``), IPv6 right after the fixed header (with
    extension headers other bytes stand in for the ports: both directions still agree when
    they carry the same headers).
    """
    code: list[tuple[int, int, int, int]] = []

    def xor_into_m0(load: tuple[int, int, int, int]) -> None:
        code.extend([load, (_LDX | _W | _MEM, 0, 0, 0), (_ALU | _XOR_X, 0, 0, 0),
                     (_ST, 0, 0, 0)])

    if family == 4:
        code += [(_LD | _W | _ABS, 0, 0, 12), (_ST, 0, 0, 0)]
        xor_into_m0((_LD | _W | _ABS, 0, 0, 16))
        code.append((_LDX | _B | _MSH, 0, 0, 0))     # X = IP header length
        # A = source port ^ destination port ^ M[0]
        code += [(_LD | _H | _IND, 0, 0, 0), (_ST, 0, 0, 1), (_LD | _H | _IND, 0, 0, 2),
                 (_LDX | _W | _MEM, 0, 0, 1), (_ALU | _XOR_X, 0, 0, 0),
                 (_LDX | _W | _MEM, 0, 0, 0), (_ALU | _XOR_X, 0, 0, 0)]
    else:
        code += [(_LD | _W | _ABS, 0, 0, 8), (_ST, 0, 0, 0)]
        for offset in range(12, 40, 4):
            xor_into_m0((_LD | _W | _ABS, 0, 0, offset))
        code += [(_LD | _H | _ABS, 0, 0, 40), (_ST, 0, 0, 1), (_LD | _H | _ABS, 0, 0, 42),
                 (_LDX | _W | _MEM, 0, 0, 1), (_ALU | _XOR_X, 0, 0, 0),
                 (_LDX | _W | _MEM, 0, 0, 0), (_ALU | _XOR_X, 0, 0, 0)]
    code += [(_ALU | _MUL_K, 0, 0, _MIX), (_ALU | _RSH_K, 0, 0, 16),
             (_ALU | _MOD_K, 0, 0, buckets), (_JMP | _JEQ_K, 0, 1, bucket),
             (_RET, 0, 0, 0xFFFF), (_RET, 0, 0, 0)]
    return ",".join([str(len(code))] + [f"{c} {jt} {jf} {k}" for c, jt, jf, k in code])


def _jump_rule(builtin: str, chain: str, spec: RuleSpec) -> str:
    """The jump as ``iptables-save`` shows it (without ``-A``): packets of offloaded plain
    connections (``marks.plain``, set by the nftables table before these hooks) never enter
    our chains, so they cost this one rule."""
    plain = spec.offload.mark_plain
    return f"{builtin} -p tcp -m mark ! --mark {plain:#x}/{plain:#x} -j {chain}"


def _skip_rules(chain: str, spec: RuleSpec, device_flag: str) -> list[str]:
    """RETURN for loopback and configured ports (either end)."""
    rules = [f"-A {chain} {device_flag} lo -j RETURN"]
    for start in range(0, len(spec.skip_ports), MULTIPORT_MAX):
        ports = ",".join(str(p) for p in spec.skip_ports[start:start + MULTIPORT_MAX])
        rules.append(f"-A {chain} -p tcp -m multiport --ports {ports} -j RETURN")
    return rules


def _queue_rules(chain: str, spec: RuleSpec, family: int, match: str, bypass: bool
                 ) -> list[str]:
    """The rule sending ``match``'s packets to the queue, or with several workers one rule
    per worker (:func:`spread_program`), the last worker's catching the rest."""
    tail = " --queue-bypass" if bypass else ""
    last = spec.workers - 1
    rules = [f'-A {chain} {match}-m bpf --bytecode '
             f'"{spread_program(family, k, spec.workers)}" -j NFQUEUE --queue-num '
             f"{spec.queue_num + k}{tail}" for k in range(last)]
    return rules + [f"-A {chain} {match}-j NFQUEUE --queue-num "
                    f"{spec.queue_num + last}{tail}"]


def chain_rules(spec: RuleSpec, family: int = 4) -> dict[str, list[str]]:
    """table -> the ``-A`` lines filling the own chains (IPv4 and IPv6 differ only in the
    workers' spread programs)."""
    marks = spec.offload
    injected = f"{marks.mark_injected:#x}/{marks.mark_injected:#x}"
    encrypted = f"{marks.mark_encrypted:#x}/{marks.mark_encrypted:#x}"
    # Offloaded plain connections never get here (:func:`_jump_rule`).
    out = [
        # Injected toward the local stack: plaintext sequence space, keep it out of conntrack's
        # wire view (it would judge such a packet INVALID once the two spaces drift apart).
        f"-A {CHAIN_OUT} -o lo -m mark --mark {injected} -j CT --notrack",
        *_skip_rules(CHAIN_OUT, spec, "-o"),
        f"-A {CHAIN_OUT} -m mark --mark {injected} -j RETURN",
        *_queue_rules(CHAIN_OUT, spec, family, "-p tcp ", bypass=True),
    ]
    inbound = [
        *_skip_rules(CHAIN_IN, spec, "-i"),
        # Tell the daemon in the nfmark that the connection is encrypted (fail closed on a
        # packet it cannot process).
        f"-A {CHAIN_IN} -j CONNMARK --restore-mark --nfmask {marks.mark_encrypted:#x} "
        f"--ctmask {marks.mark_encrypted:#x}",
        *_queue_rules(CHAIN_IN, spec, family, f"-m connmark --mark {encrypted} ", bypass=False),
        *_queue_rules(CHAIN_IN, spec, family, "-p tcp ", bypass=True),
    ]
    return {"raw": out, "mangle": inbound}


@dataclass(frozen=True)
class TableState:
    """What ``iptables-save -t TABLE`` shows of ours: own chains and jump rules (as saved)."""

    chains: frozenset[str]
    jumps: tuple[str, ...]      # "OUTPUT -p tcp -j TCPCRYPT_OUT", one per occurrence


OWN_CHAINS = frozenset(chain for _, _, chain in JUMPS)


def parse_save(text: str) -> TableState:
    """Find our chains and every rule that jumps to one of them in ``iptables-save`` output."""
    chains: set[str] = set()
    jumps: list[str] = []
    for line in text.splitlines():
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name in OWN_CHAINS:
                chains.add(name)
        elif line.startswith("-A "):
            words = line.split()
            if words[1] not in OWN_CHAINS and words[-1] in OWN_CHAINS and words[-2] == "-j":
                jumps.append(" ".join(words[1:]))
    return TableState(frozenset(chains), tuple(jumps))


def install_text(spec: RuleSpec, state: dict[str, TableState], family: int = 4) -> str:
    """``iptables-restore --noflush`` input that (re)creates our chains and leaves exactly one
    jump to each from its built-in chain.

    Declaring a chain (``:NAME - [0:0]``) under --noflush creates it or flushes it, so running
    this twice leaves the same rules as running it once. A jump from the built-in chain that
    differs from ours or repeats it, and a jump to it from another built-in chain (an earlier
    version's placement), is deleted: a packet must traverse our chain once.
    """
    rules = chain_rules(spec, family)
    lines: list[str] = []
    for table in TABLES:
        lines.append(f"*{table}")
        own = [chain for t, _, chain in JUMPS if t == table]
        lines += [f":{chain} - [0:0]" for chain in own]
        lines += rules[table]
        present = state.get(table, TableState(frozenset(), ())).jumps
        for t, builtin, chain in JUMPS:
            if t != table:
                continue
            jump = _jump_rule(builtin, chain, spec)
            ours = [found for found in present if found.endswith(f" -j {chain}")]
            if jump in ours:
                ours.remove(jump)
            else:
                lines.append(f"-I {jump.replace(' ', ' 1 ', 1)}")
            lines += [f"-D {found}" for found in ours]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_text(state: dict[str, TableState]) -> str | None:
    """``iptables-restore --noflush`` input deleting every jump to our chains and the chains;
    ``None`` when nothing of ours is installed."""
    lines: list[str] = []
    for table in TABLES:
        found = state.get(table)
        if found is None or not (found.chains or found.jumps):
            continue
        lines.append(f"*{table}")
        lines += [f"-D {jump}" for jump in found.jumps]
        lines += [f"-F {chain}" for chain in sorted(found.chains)]
        lines += [f"-X {chain}" for chain in sorted(found.chains)]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else None


# ---------------------------------------------------------------------------------------------
# Running the tools


@dataclass(frozen=True)
class Backend:
    """One iptables flavour: ``nft`` (iptables-nft) or ``legacy`` (iptables-legacy)."""

    name: str

    def tool(self, family: int, kind: str = "") -> str:
        """``iptables-nft``, ``ip6tables-legacy-restore``... for family 4 or 6."""
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-{self.name}" + (f"-{kind}" if kind else "")

    def available(self) -> bool:
        return all(shutil.which(self.tool(family, kind)) for family in (4, 6)
                   for kind in ("save", "restore"))


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise FirewallError(f"{argv[0]} not found: install the iptables package") from exc
    except subprocess.TimeoutExpired as exc:
        raise FirewallError(f"{argv[0]} did not finish in {COMMAND_TIMEOUT:.0f}s "
                            f"(xtables lock held?)") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise FirewallError(f"{' '.join(argv)} failed (exit {done.returncode}): {detail}")
    return done.stdout


def detect_backend(choice: str) -> Backend:
    """The configured backend, or for ``auto`` the one ``iptables`` on PATH is."""
    if choice in ("nft", "legacy"):
        backend = Backend(choice)
    else:
        version = _run(["iptables", "-V"])
        backend = Backend("legacy" if "legacy" in version else "nft")
    if not backend.available():
        raise FirewallError(f"iptables-{backend.name}-restore/-save (and the ip6tables ones) "
                            f"not found: install the iptables package")
    return backend


class Firewall:
    """Installs and removes our rules with one backend, for IPv4 and (optionally) IPv6."""

    def __init__(self, backend: Backend, ipv6: bool = True) -> None:
        self.backend = backend
        self.ipv6 = ipv6
        self.families: tuple[int, ...] = (4, 6) if ipv6 else (4,)

    def state(self, family: int) -> dict[str, TableState]:
        return {table: parse_save(_run([self.backend.tool(family, "save"), "-t", table]))
                for table in TABLES}

    def _restore(self, family: int, text: str) -> None:
        _run([self.backend.tool(family, "restore"), "--wait", "--noflush"], stdin=text)

    def install(self, spec: RuleSpec) -> None:
        """The nftables table (replaced atomically), then our chains and jumps per family."""
        nftables.install_table(spec.offload)
        for family in self.families:
            self._restore(family, install_text(spec, self.state(family), family))

    def remove_queue(self) -> bool:
        """Delete our iptables jumps and chains in every family; True when any was there."""
        removed = False
        for family in self.families:
            text = remove_text(self.state(family))
            if text is not None:
                self._restore(family, text)
                removed = True
        return removed

    def remove(self, encrypted_mark: int) -> Removal:
        """Stop queueing; remove the nftables table unless the guard is still needed.

        The guard stays while conntrack records any connection as encrypted
        (``encrypted_mark``) or the table's ``@enc`` sets hold one conntrack does not
        track: such a connection's local socket may still send, and without the guard that
        would be plaintext. It also stays when the sets cannot be read (fail closed).
        """
        queue = self.remove_queue()
        if not nftables.table_exists():
            return Removal(queue, table=False, guarded=0)
        guarded = encrypted_connections(encrypted_mark, self.ipv6)
        try:
            untracked = sum(map(len, nftables.encrypted_elements().values()))
        except FirewallError as exc:
            return Removal(queue, table=False, guarded=guarded, unreadable=str(exc))
        if guarded or untracked:
            return Removal(queue, table=False, guarded=guarded, untracked=untracked)
        return Removal(queue, table=nftables.remove_table(), guarded=0)

    def installed(self) -> bool:
        return nftables.table_exists() or any(
            state.chains or state.jumps for family in self.families
            for state in self.state(family).values())


@dataclass(frozen=True)
class Removal:
    """What :meth:`Firewall.remove` did: queue chains removed, table removed, connections
    still guarded (the table kept for them): ``guarded`` recorded by conntrack,
    ``untracked`` in the ``@enc`` sets; ``unreadable``: why the sets could not be read (the
    table kept)."""

    queue: bool
    table: bool
    guarded: int
    untracked: int = 0
    unreadable: str = ""

    @property
    def removed(self) -> bool:
        return self.queue or self.table

    @property
    def kept(self) -> bool:
        """The table stays for the guard."""
        return bool(self.guarded or self.untracked or self.unreadable)

    def describe(self) -> str:
        """One line for the operator."""
        table = f"kept the guard table 'inet {nftables.TABLE}'"
        if self.unreadable:
            return (f"{table}: cannot tell which connections it still guards ("
                    f"{self.unreadable}); run `tcpcryptd disable` again, or `nft delete table "
                    f"inet {nftables.TABLE}` to remove it regardless")
        if self.kept:
            return (f"{table} for {self.guarded + self.untracked} connection(s) still "
                    f"recorded as encrypted ({self.guarded} in conntrack, {self.untracked} "
                    f"untracked): their packets are reset or dropped, never sent in "
                    f"plaintext; run `tcpcryptd disable` again once they have ended")
        return "removed the firewall rules" if self.removed else "no firewall rules to remove"
