"""The figures, each run on every system that has it, interleaved A/B/A/B so machine drift cancels.

A sequential figure runs one sample per system per round and flips the order
every round, after one discarded warm-up round.  The figures that need running
containers (memory, restart, tasks ls) share one population per system, grown
level by level (0, 10, 100, 500): at each level both systems are grown first,
then the figures of that level alternate between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.bench.common import Progress, Samples, ksm_settle

FIGURES = ("run_cli", "run_client", "concurrent", "memory", "death", "restart", "ls")


@dataclass(frozen=True)
class Sizes:
    concurrency: tuple[int, ...] = (20, 100)
    memory: tuple[int, ...] = (0, 10, 100)
    restart: tuple[int, ...] = (10, 100)
    ls: tuple[int, ...] = (500,)


FULL = Sizes()
QUICK = Sizes(concurrency=(5, 10), memory=(0, 5), restart=(5,), ls=(50,))


def parse_only(text: str) -> list[str]:
    """``--only 1,death,7`` -> figure names; numbers are the figures' places in FIGURES."""
    out = []
    for word in filter(None, (w.strip() for w in text.split(","))):
        name = FIGURES[int(word) - 1] if word.isdigit() and 1 <= int(word) <= len(FIGURES) else word
        if name not in FIGURES:
            raise ValueError(f"unknown figure {word!r}; figures: {', '.join(FIGURES)} (or 1-{len(FIGURES)})")
        out.append(name)
    return out


class Runner:
    def __init__(self, systems: dict[str, Any], samples: Samples, progress: Progress, runs: int,
                 sizes: Sizes) -> None:  # fmt: skip
        self.systems = systems
        self.samples = samples
        self.progress = progress
        self.runs = runs
        self.heavy_runs = max(1, min(runs, 10))
        self.sizes = sizes

    def interleave(self, figure: str, cases: Sequence[tuple[str, Callable[[], float]]], runs: int,
                   unit: str = "s", warmup: bool = True) -> None:  # fmt: skip
        for i in range(-1 if warmup else 0, runs):
            order = cases if i % 2 == 0 else list(reversed(cases))
            for system, fn in order:
                self.progress(f"{figure}: {'warm-up' if i < 0 else f'run {i + 1}/{runs}'} {system}")
                value = fn()
                if i >= 0:
                    self.samples.add(figure, system, value, unit)

    def has(self, figure: str) -> list[tuple[str, Any]]:
        return [(name, s) for name, s in self.systems.items() if hasattr(s, figure)]

    # -- the figures without a population --------------------------------------------------------------------
    def run_cli(self) -> None:
        self.interleave("1 run --rm (CLI)", [(n, s.run_rm) for n, s in self.has("run_rm")], self.runs)

    def run_client(self) -> None:
        self.interleave(
            "2 run --rm (client)", [(n, s.lifecycle) for n, s in self.has("lifecycle")], self.runs
        )
        # The same through separate calls (create, start, wait, delete), beside runc's four commands.
        cases = [(n, s.calls) for n, s in self.has("calls")]
        if cases:
            cases += [(n, s.lifecycle) for n, s in self.has("lifecycle") if not hasattr(s, "calls")]
            self.interleave("2b the same in separate calls (client)", cases, self.runs)

    def concurrent(self) -> None:
        for n in self.sizes.concurrency:
            walls: dict[str, list[float]] = {}
            cases = [(name, _keep(walls, name, functools.partial(s.concurrent, n)))
                     for name, s in self.has("concurrent")]  # fmt: skip
            runs = self.runs if n <= 20 else self.heavy_runs
            self.interleave(f"3 {n} concurrent: wall", cases, runs)
            for name, values in walls.items():
                self.samples.extend(
                    f"3 {n} concurrent: containers/s", name, [n / v for v in values[1:]], "/s"
                )

    def death(self) -> None:
        self.interleave(
            "5 shim SIGKILL -> /tasks/exit", [(n, s.death) for n, s in self.has("death")], self.runs
        )

    # -- the figures on a population of running containers ---------------------------------------------------
    def population(self, wanted: set[str]) -> None:
        levels: dict[int, list[str]] = {}
        for figure, sizes in (("memory", self.sizes.memory), ("restart", self.sizes.restart),
                              ("ls", self.sizes.ls)):  # fmt: skip
            if figure in wanted:
                for n in sizes:
                    levels.setdefault(n, []).append(figure)
        grown = self.has("grow")
        v1_done = False
        for level in sorted(levels):
            for name, s in grown:
                while len(s.sleepers) < level:
                    s.grow(min(level, len(s.sleepers) + 10))
                    self.progress(f"population: {name} {len(s.sleepers)}/{level} running")
            for figure in levels[level]:
                runs = self.heavy_runs if level >= 100 else self.runs
                if figure == "memory":
                    self.memory(level, grown)
                    if level and not v1_done and hasattr(self.systems.get("containerd"), "memory_v1"):
                        self.progress("memory: containerd v1 shims")
                        self.samples.add(f"4 PSS per container @{level}", "containerd-v1",
                                         self.systems["containerd"].memory_v1(), "kB")  # fmt: skip
                        v1_done = True
                elif figure == "restart":
                    self.interleave(f"6 restart with {level} running", [(n, s.restart) for n, s in grown], runs,
                                    warmup=False)  # fmt: skip
                else:
                    cases = [(n, s.ls) for n, s in self.has("ls")]
                    cases += [(f"{n}-cli", s.ls_cli) for n, s in self.has("ls_cli")]
                    cases += [(n, s.ls_client) for n, s in self.has("ls_client")]
                    self.interleave(f"7 tasks ls with {level} running", cases, runs)
        for name, s in grown:
            self.progress(f"population: removing {name}'s {len(s.sleepers)} containers")
            s.shrink()

    def memory(self, level: int, grown: list[tuple[str, Any]]) -> None:
        ksm_settle(self.progress)
        for i in range(3):
            for name, s in grown:
                self.progress(f"memory @{level}: sample {i + 1}/3 {name}")
                per, own = s.memory()
                if level:
                    self.samples.add(f"4 PSS per container @{level}", name, per, "kB")
                self.samples.add(f"4 daemon PSS @{level}", name, own, "kB")

    def run(self, only: Sequence[str]) -> None:
        for figure in ("run_cli", "run_client", "concurrent", "death"):
            if figure in only:
                getattr(self, figure)()
        wanted = {"memory", "restart", "ls"} & set(only)
        if wanted:
            self.population(wanted)


def _keep(store: dict[str, list[float]], name: str, fn: Callable[[], float]) -> Callable[[], float]:
    """Wrap ``fn`` so each value it returns is also kept in ``store[name]`` (the warm-up's included)."""

    def call() -> float:
        value = fn()
        store.setdefault(name, []).append(value)
        return value

    return call
