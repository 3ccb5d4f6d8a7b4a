"""What one ``python -m bench`` run measures: the full run and the ``--quick`` one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MB = 1_000_000


@dataclass(frozen=True)
class Settings:
    quick: bool
    #: repetitions of every throughput and loss measurement (the median is reported)
    repetitions: int
    #: seconds of each iperf3 run
    seconds: float
    #: loss probability (per packet, applied on each namespace's ingress) -> bytes per transfer
    loss_sizes: dict[float, int]
    #: one transfer may take this long before it counts as failed
    loss_timeout: float
    #: sequential connections per connection-rate run (and a time cap)
    connections: int
    connection_seconds: float
    #: idle encrypted flows held for the memory figure; RSS is read at each checkpoint
    idle_checkpoints: tuple[int, ...]
    #: seconds allowed to open the flows up to one checkpoint
    idle_timeout: float

    @property
    def idle_flows(self) -> int:
        return self.idle_checkpoints[-1]

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_sizes"] = {f"{loss:g}": size for loss, size in self.loss_sizes.items()}
        return data


FULL = Settings(quick=False, repetitions=3, seconds=10.0,
                loss_sizes={0.001: 32 * MB, 0.01: 32 * MB, 0.05: 16 * MB}, loss_timeout=180.0,
                connections=3000, connection_seconds=15.0, idle_checkpoints=(1000, 10000),
                idle_timeout=300.0)
QUICK = Settings(quick=True, repetitions=1, seconds=3.0, loss_sizes={0.01: 8 * MB},
                 loss_timeout=60.0, connections=300, connection_seconds=3.0,
                 idle_checkpoints=(1000,), idle_timeout=60.0)
