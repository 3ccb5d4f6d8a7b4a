"""bench.firewall_cost: counting perf call chains (``perf script -F comm,ip,sym`` text)."""

from __future__ import annotations

import json

from bench.firewall_cost import FLOOR_TABLE, base_chains, count_stacks, floor_table

SCRIPT = """iperf3 
\tffffffff82251fb9 nft_do_chain
\tffffffff82251fba nft_do_chain_inet
\tffffffff82251fbb nf_hook_slow
\tffffffff82251fbc ip_rcv
\tffffffff82251fbd __netif_receive_skb

iperf3 
\tffffffff82251fb9 nf_conntrack_in
\tffffffff82251fbb nf_hook_slow
\tffffffff82251fbc __ip_local_out
\tffffffff82251fbd ip_queue_xmit

swapper 
\tffffffff82251fb9 pv_native_safe_halt
\tffffffff82251fbb default_idle

iperf3 
\tffffffff82251fba nft_do_chain_inet
\tffffffff82251fbb nf_hook_slow
\tffffffff82251fbc ip_local_deliver
\tffffffff82251fbd ip_rcv_finish

tcpcryptd 
\tffffffff82251fbb nf_hook_slow
\tffffffff82251fbc ip_rcv

ksoftirqd/1 
\tffffffff82251fb9 tcp_v4_rcv
\tffffffff82251fbc ip_local_deliver_finish
"""


def test_counts_busy_samples_and_hooks_by_direction_of_the_bed_processes_only():
    counts = count_stacks(SCRIPT)
    assert counts["busy"] == 3          # not the idle loop, not another process
    assert counts["hooks"] == 3
    assert counts["table"] == 2         # nft_do_chain_inet right under the hook loop
    assert counts["prerouting"] == 1 and counts["input"] == 1 and counts["output"] == 1


def test_empty_input_counts_nothing():
    assert sum(count_stacks("").values()) == 0


def _chain(family, table, name, hook=None, prio=None):
    chain = {"family": family, "table": table, "name": name, "handle": 1}
    if hook is not None:
        chain.update(type="filter", hook=hook, prio=prio, policy="accept")
    return {"chain": chain}


LISTING = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    _chain("inet", "tcpcryptd", "out_offload", "output", -301),
    _chain("ip", "raw", "OUTPUT", "output", -300),
    _chain("ip", "raw", "TCPCRYPT_OUT"),                  # a regular chain: no hook
    _chain("ip6", "raw", "OUTPUT", "output", -300),
    _chain("inet", "tcpcryptd", "in_record", "prerouting", -149),
]})


def test_base_chains_are_the_hooked_ones():
    assert base_chains(LISTING) == {("inet", "tcpcryptd", "output", -301),
                                    ("ip", "raw", "output", -300),
                                    ("ip6", "raw", "output", -300),
                                    ("inet", "tcpcryptd", "prerouting", -149)}


def test_floor_table_has_one_empty_chain_per_ipv4_hook_and_priority():
    lines = floor_table(base_chains(LISTING)).splitlines()
    assert lines[0] == f"table ip {FLOOR_TABLE} {{" and lines[-1] == "}"
    chains = lines[1:-1]
    assert [line.split(" { ", 1)[1] for line in chains] == [
        "type filter hook output priority -301; policy accept; }",
        "type filter hook output priority -300; policy accept; }",   # ip, not ip6 again
        "type filter hook prerouting priority -149; policy accept; }",
    ]
    assert len({line.split()[1] for line in chains}) == 3      # distinct chain names
