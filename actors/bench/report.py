"""What a run shows: a table of p50/p90 per figure and system, the contactor/peer ratios, the goals.

The ratio is always contactor's p50 over the peer's p50 (for containers/s a
higher ratio is better, for everything else a lower one).  The goals are those of
the issue that asked for this benchmark; each is checked against numbers of the
same run.  The PNG shows each latency figure's distribution per system side by side.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.bench.common import Samples

PEERS = ("containerd", "containerd-v1", "runc")
MB = 1024.0  # kB per MB, as smaps counts


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms"
    if unit == "kB":
        return f"{value / MB:.2f} MB"
    return f"{value:.1f}{unit}"


def table(samples: Samples) -> str:
    rows = [("figure", "system", "n", "p50", "p90", "contactor/peer")]
    for figure, systems in samples.values.items():
        unit = samples.units[figure]
        ours = {name: v for name, v in systems.items() if name not in PEERS}
        for name, values in sorted(systems.items(), key=lambda kv: (kv[0] in PEERS, kv[0])):
            ratio = ""
            if name in PEERS:
                ratio = "  ".join(f"{o}: {p50(v) / p50(values):.2f}x" for o, v in ours.items() if p50(values))
            rows.append(
                (figure, name, str(len(values)), _fmt(p50(values), unit), _fmt(p90(values), unit), ratio)
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
            + "  "
            + r[5]
        )
    return "\n".join(lines)


def _find(samples: Samples, prefix: str, system: str) -> list[tuple[str, list[float]]]:
    return [(f, s[system]) for f, s in samples.values.items() if f.startswith(prefix) and system in s]


def goals(samples: Samples) -> list[tuple[str, str, bool]]:
    """(goal, what was measured, met) for every goal whose figure ran."""
    out: list[tuple[str, str, bool]] = []

    def ratio(
        prefix: str, peer: str, text: str, ok: Callable[[float], bool], ours: str = "contactor"
    ) -> None:
        for figure, mine in _find(samples, prefix, ours):
            theirs = samples.values[figure].get(peer)
            if theirs:
                r = p50(mine) / p50(theirs)
                out.append((f"{text} ({figure})", f"{r:.2f}x", ok(r)))

    def absolute(prefix: str, text: str, ok: Callable[[float], bool], ours: str = "contactor") -> None:
        for figure, mine in _find(samples, prefix, ours):
            value = p50(mine)
            out.append((f"{text} ({figure}, {ours})", _fmt(value, samples.units[figure]), ok(value)))

    ratio("1 ", "containerd", "(1) at most 0.8x containerd's ctr run --rm", lambda r: r <= 0.8)
    ratio("2 ", "runc", "(2) at most 1.5x runc create+start+wait+delete", lambda r: r <= 1.5)
    ratio("3 ", "containerd", "(3) at least 1.25x containerd's containers/s", lambda r: r >= 1.25)
    out[:] = [g for g in out if not (g[0].startswith("(3)") and "wall" in g[0])]
    absolute("4 PSS per container", "(4) at most 5 MB PSS per container", lambda v: v <= 5 * MB)
    absolute("5 ", "(5) at most 15 ms from shim SIGKILL to /tasks/exit", lambda v: v <= 0.015)
    absolute("6 restart with 100 ", "(6) 100 containers listed within 1 s of a restart", lambda v: v < 1.0)
    for who in ("contactor", "contactor-cli"):
        absolute("7 ", "(7) tasks ls under 50 ms", lambda v: v < 0.050, ours=who)
    return out


def goals_table(samples: Samples) -> str:
    rows = goals(samples)
    if not rows:
        return ""
    width = max(len(g) for g, _, _ in rows)
    return "\n".join(f"{g.ljust(width)}  {m:>10}  {'met' if ok else 'MISSED'}" for g, m, ok in rows)


def as_json(samples: Samples, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "units": samples.units,
        "figures": samples.values,
        "summary": {
            f: {n: {"p50": p50(v), "p90": p90(v), "n": len(v)} for n, v in s.items()}
            for f, s in samples.values.items()
        },
        "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals(samples)],
    }


def png(samples: Samples, path: Path) -> bool:
    """Box plots of every latency figure, one box per system; False without matplotlib."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    figures = [f for f in samples.values if samples.units[f] == "s"]
    if not figures:
        return False
    cols = min(3, len(figures))
    rows = (len(figures) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, figure in zip(axes.flat, figures, strict=False):
        systems = samples.values[figure]
        ax.boxplot([[v * 1000 for v in vs] for vs in systems.values()], showfliers=True)
        ax.set_xticks(range(1, len(systems) + 1), list(systems), fontsize=8)
        ax.set_title(figure, fontsize=9)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(figures) :]:
        ax.set_visible(False)
    fig.suptitle("contactor beside its peers (p50 line, box p25-p75)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
