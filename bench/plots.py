"""PNG plots of latest.json (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench.report import CONNECTION_ROWS, OFFLOAD_DIRECTIONS, THROUGHPUT_ROWS  # noqa: E402

BASELINE_COLOR = "#8c8c8c"
TCPCRYPTD_COLOR = "#1f77b4"


def _bar_labels(ax, bars, values: list[float | None], fmt: str) -> None:
    for bar, value in zip(bars, values):
        ax.annotate("not measured" if value is None else fmt.format(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")


def _log_axis(ax, values: list[float | None]) -> None:
    """Log scale from 1 with headroom above the tallest bar for its label."""
    ax.set_yscale("log")
    ax.set_ylim(1, max([v for v in values if v] + [1]) * 3)


def throughput_plot(results: dict[str, Any], path: Path) -> None:
    tput = results["throughput_mbps"]
    labels = [label.replace("tcpcryptd ", "tcpcryptd\n").replace(", ", "\n")
              for label in THROUGHPUT_ROWS.values()]
    values = [tput[row] for row in THROUGHPUT_ROWS]
    colors = [BASELINE_COLOR if row in ("plain", "passthrough") else TCPCRYPTD_COLOR
              for row in THROUGHPUT_ROWS]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    # A missing value is drawn as an empty bar of height 1 (log scale) labelled so.
    bars = ax.bar(labels, [v or 1 for v in values], color=colors)
    _bar_labels(ax, bars, values, "{:.0f}")
    _log_axis(ax, values)
    ax.set_ylabel("Mbit/s (median, log scale)")
    ax.set_title(f"Bulk throughput, iperf3 A -> B over veth, MTU 1500 ({results['date']})")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_plot(results: dict[str, Any], path: Path) -> None:
    entries = results["loss"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    positions = range(len(entries))
    width = 0.38
    for offset, key, label, color in ((-width / 2, "passthrough_mbps", "NFQUEUE pass-through",
                                       BASELINE_COLOR),
                                      (width / 2, "tcpcryptd_mbps", "tcpcryptd AES-128-GCM",
                                       TCPCRYPTD_COLOR)):
        values = [entry[key] for entry in entries]
        bars = ax.bar([p + offset for p in positions], [v or 0 for v in values], width,
                      label=label, color=color)
        _bar_labels(ax, bars, values, "{:.0f}")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([f"{e['loss'] * 100:g}% loss\n" +
                        {True: "sha256 intact", False: "INTEGRITY FAILURE",
                         None: "not measured"}[e["intact"]] for e in entries])
    ax.set_ylabel("Mbit/s (nc transfer, median)")
    ax.set_title("Throughput under random loss (each direction)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def connections_plot(results: dict[str, Any], path: Path) -> None:
    conn = results["connections"]
    values = [conn[f"{key}_per_s"] for key in CONNECTION_ROWS]
    colors = [BASELINE_COLOR if key in ("plain", "passthrough") else TCPCRYPTD_COLOR
              for key in CONNECTION_ROWS]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(list(CONNECTION_ROWS.values()), [v or 1 for v in values], color=colors)
    _bar_labels(ax, bars, values, "{:.0f}")
    _log_axis(ax, values)
    ax.set_ylabel("connections per second (log scale)")
    ax.set_title("Sequential connect + 1-byte request/response + close")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def offload_plot(results: dict[str, Any], path: Path) -> None:
    """Plain TCP with the daemon on one end vs no daemon: throughput and connections/s, each
    direction, ratio above the daemon bar."""
    offload = results.get("offload", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    width = 0.38
    for ax, metric, name, unit in ((axes[0], "throughput_mbps", "throughput", "Mbit/s (median)"),
                                   (axes[1], "connections_per_s", "connections",
                                    "connections per second (median)")):
        keys = list(OFFLOAD_DIRECTIONS)
        positions = range(len(keys))
        tops = []
        for offset, side, label, color in ((-width / 2, "no_daemon", "no daemon",
                                            BASELINE_COLOR),
                                           (width / 2, "daemon", "tcpcryptd on A only",
                                            TCPCRYPTD_COLOR)):
            values = [offload.get(key, {}).get(metric, {}).get(side) for key in keys]
            tops += [v for v in values if v]
            bars = ax.bar([p + offset for p in positions], [v or 0 for v in values], width,
                          label=label, color=color)
            if side == "no_daemon":
                _bar_labels(ax, bars, values, "{:,.0f}")
                continue
            ratios = [results["ratios"].get(f"offload_{key}_{name}_vs_no_daemon")
                      for key in keys]
            labels = [None if v is None else f"{v:,.0f}\n{r:.2f}x" if r is not None
                      else f"{v:,.0f}" for v, r in zip(values, ratios)]
            for bar, text in zip(bars, labels):
                ax.annotate("not measured" if text is None else text,
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_ylim(0, max(tops + [1]) * 1.45)
        ax.set_xticks(list(positions))
        ax.set_xticklabels([OFFLOAD_DIRECTIONS[key].replace(" (", "\n(") for key in keys],
                           fontsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle("Plain TCP: tcpcryptd on one end (peer without it) vs no daemon")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = {"throughput.png": throughput_plot, "loss.png": loss_plot,
         "connections.png": connections_plot, "offload.png": offload_plot}


def write_plots(results: dict[str, Any], directory: Path) -> list[Path]:
    """Every plot into ``directory``; returns the files written."""
    written = []
    for name, draw in PLOTS.items():
        path = directory / name
        draw(results, path)
        written.append(path)
    return written
