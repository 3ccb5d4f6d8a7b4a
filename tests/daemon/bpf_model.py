"""A classic BPF interpreter for the instructions the workers' spread programs use.

The firewall gives the kernel ``-m bpf --bytecode "N,code jt jf k,..."``; the tests run the
same text here on packets built by hand, to check which worker a packet goes to.
"""

from __future__ import annotations

import struct


def run(bytecode: str, packet: bytes) -> int:
    """The program's return value for ``packet`` (0: no match); 0 on an out-of-bounds load,
    as the kernel aborts then."""
    count, *rest = bytecode.split(",")
    code = [tuple(int(v) for v in ins.split()) for ins in rest]
    assert len(code) == int(count)
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        cls = op & 0x07
        try:
            if cls in (0x00, 0x01):        # LD / LDX
                size = {0x00: 4, 0x08: 2, 0x10: 1}[op & 0x18]
                mode = op & 0xE0
                if mode == 0xA0:           # ldxb 4*([k]&0xf)
                    x = (packet[k] & 0xF) * 4
                    continue
                if mode == 0x60:
                    value = mem[k]
                else:
                    offset = k + (x if mode == 0x40 else 0)
                    if offset + size > len(packet):
                        return 0
                    value = int.from_bytes(packet[offset:offset + size], "big")
                if cls == 0x00:
                    a = value
                else:
                    x = value
            elif cls == 0x02:              # ST
                mem[k] = a
            elif cls == 0x04:              # ALU
                operand = x if op & 0x08 else k
                alu = op & 0xF0
                if alu == 0xA0:
                    a ^= operand
                elif alu == 0x20:
                    a = (a * operand) & 0xFFFFFFFF
                elif alu == 0x70:
                    a >>= operand
                elif alu == 0x90:
                    a %= operand
                else:
                    raise AssertionError(f"ALU op {alu:#x} not modelled")
            elif cls == 0x05:              # JEQ #k
                assert op & 0xF0 == 0x10
                pc += jt if a == k else jf
            elif cls == 0x06:              # RET #k
                return k
            else:
                raise AssertionError(f"class {cls} not modelled")
        except IndexError:
            return 0


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, ihl: int = 5) -> bytes:
    import socket
    header = bytes([0x40 | ihl, 0]) + struct.pack(">H", ihl * 4 + 20) + bytes(5) + b"\x06" \
        + bytes(2) + socket.inet_aton(src) + socket.inet_aton(dst) + bytes(ihl * 4 - 20)
    return header + struct.pack(">HH", sport, dport) + bytes(16)


def ipv6_tcp(src: str, dst: str, sport: int, dport: int) -> bytes:
    import socket
    header = b"\x60" + bytes(3) + struct.pack(">H", 20) + b"\x06\x40" \
        + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return header + struct.pack(">HH", sport, dport) + bytes(16)
