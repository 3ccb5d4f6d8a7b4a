"""bench.firewall_cost: counting perf call chains (``perf script -F comm,ip,sym`` text)."""

from __future__ import annotations

from bench.firewall_cost import count_stacks

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

tcpcryptd 
\tffffffff82251fbb nf_hook_slow
\tffffffff82251fbc ip_rcv

ksoftirqd/1 
\tffffffff82251fb9 tcp_v4_rcv
\tffffffff82251fbc ip_local_deliver_finish
"""


def test_counts_busy_samples_and_hooks_by_direction_of_the_bed_processes_only():
    counts = count_stacks(SCRIPT)
    assert counts["busy"] == 2          # not the idle loop, not another process
    assert counts["hooks"] == 2
    assert counts["prerouting"] == 1 and counts["output"] == 1


def test_empty_input_counts_nothing():
    assert sum(count_stacks("").values()) == 0
