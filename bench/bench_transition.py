"""The cost of one lifecycle transition on the shared machine, against a machine built per trial.

trialflow builds one ``transitions.Machine`` from the lifecycle table at import time and fires
every trial's steps through it (``trialflow/domain/lifecycle.py``). The alternative the
transitions docs show, a ``Machine(model=trial, ...)`` per object, is what this compares with.

    .venv/bin/python bench/bench_transition.py [--write-results]

Target (issue 2): one transition on the shared machine < 20 µs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402
from transitions import Machine  # noqa: E402

from trialflow.domain import lifecycle as lc  # noqa: E402
from trialflow.domain.trial import Trial  # noqa: E402
from trialflow.errors import TransitionRefused  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS-signups.md"
TARGET_US = 20.0
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Model:
    """The smallest thing with a ``state``: what the shared machine's step costs by itself."""
    def __init__(self, state: str):
        self.state = state


def per_call_us(fn, n: int, repeats: int = 7) -> float:
    """Median over ``repeats`` runs of the mean cost of one call, in µs."""
    runs = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def shared_step(n: int) -> None:
    model = Model(lc.TRIAGE)
    for _ in range(n):
        model.state = lc.TRIAGE
        lc.fire(model, "qualify")


def shared_step_on_trial(n: int) -> None:
    # The aggregate's whole step: the machine, history entry, event, timestamps.
    trials = [Trial(f"tr_{i:016x}", "bob@acme-corp.com", "acme-corp.com", NOW) for i in range(n)]
    for trial in trials:
        trial.state = lc.TRIAGE
    start = time.perf_counter()
    for trial in trials:
        trial.fire("qualify", actor="U0SDR0001", at=NOW)
    shared_step_on_trial.elapsed = time.perf_counter() - start


def refused_step(n: int) -> None:
    model = Model(lc.DISQUALIFIED)
    for _ in range(n):
        with contextlib.suppress(TransitionRefused):
            lc.fire(model, "qualify")


def machine_per_trial(n: int) -> None:
    transitions = lc._machine_transitions()
    states = list(lc.STATES)
    for _ in range(n):
        model = Model(lc.TRIAGE)
        Machine(model=model, states=states, transitions=transitions, initial=lc.TRIAGE, auto_transitions=False)
        model.qualify()


def trial_step_us(n: int, repeats: int = 7) -> float:
    runs = []
    for _ in range(repeats):
        gc.collect()
        shared_step_on_trial(n)
        runs.append(shared_step_on_trial.elapsed / n * 1e6)
    return statistics.median(runs)


def machine() -> str:
    return describe(with_os=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    shared = per_call_us(shared_step, 50_000)
    on_trial = trial_step_us(20_000)
    refused = per_call_us(refused_step, 50_000)
    per_trial = per_call_us(machine_per_trial, 500, repeats=5)
    from trialflow.db.mapping import start_mappers
    start_mappers()  # as in the server: Trial's attributes are instrumented by the ORM mapping
    on_mapped_trial = trial_step_us(20_000)

    rows = [
        ("one step on the shared machine (`lifecycle.fire`)", shared, f"< {TARGET_US:g} µs", shared < TARGET_US),
        ("one step of the aggregate (`Trial.fire`: machine + history + event)", on_trial, f"< {TARGET_US:g} µs",
         on_trial < TARGET_US),
        ("the same with the ORM mapping in place, as in the server (attribute instrumentation)", on_mapped_trial,
         "(informational)", None),
        ("one refused step (`TransitionRefused`, nothing changed)", refused, "", None),
        ("a `Machine` built per trial, then one step", per_trial, "(the alternative)", None),
    ]
    print(f"machine: {machine()}; load average: {load:.2f}")
    for what, us, target, ok in rows:
        print(f"{what:72s} {us:9.1f} µs {target} {'' if ok is None else ('met' if ok else 'NOT MET')}")
    print(f"a machine per trial costs {per_trial / shared:.0f}x one step on the shared machine")

    if args.write_results:
        write_results(rows, per_trial / shared, load)
    return 0 if all(ok is not False for *_, ok in rows) else 1


def write_results(rows, ratio, load) -> None:
    marker = "<!-- bench_transition -->"
    section = "\n".join([
        marker,
        "## Lifecycle transitions (`bench/bench_transition.py`)",
        "",
        f"- machine: {machine()}; load average when it started: {load:.2f}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "- command: `.venv/bin/python bench/bench_transition.py --write-results`",
        "- median of repeated runs of 50,000 steps (500 machine constructions)",
        "",
        "| measure | result | target | |",
        "| --- | --- | --- | --- |",
        *[f"| {what} | {us:,.1f} µs | {target} | {'' if ok is None else ('met' if ok else '**not met**')} |"
          for what, us, target, ok in rows],
        "",
        f"A machine per trial costs {ratio:.0f}x a step on the shared one.",
        marker,
    ])
    text = RESULTS.read_text() if RESULTS.exists() else "# Signup benchmarks\n\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
