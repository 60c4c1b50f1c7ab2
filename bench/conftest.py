"""Ratios between benchmarks measured in the same run, written into bench/results/latest.json.

A benchmark module declares ``RATIOS = {name: (numerator_test, denominator_test, factor)}``;
the ratio is factor × median(numerator) / median(denominator), from pytest-benchmark's own
statistics of this run. ``FLOP_RATIOS = {name: (test, reference_test)}`` divides the FLOP/s of
two benchmarks, each its ``extra_info["flop"]`` per round over its median time (a fraction of
peak: a workload's useful FLOP/s over a large GEMM's). ``make bench`` has pytest-benchmark write
its JSON to bench/results/latest.json, with the ratios added as one flat object under "ratios".

``BENCH_SMOKE=1`` (``make bench-smoke``, run by CI with --benchmark-disable) shrinks every
benchmark's workload through ``smoke(real, tiny)``: each code path runs once at a toy size, so an
API change that breaks a benchmark fails CI; the numbers of such a run mean nothing.
"""
from __future__ import annotations

import json
import os
from typing import TypeVar

SMOKE = os.environ.get("BENCH_SMOKE", "0") not in ("", "0")
_T = TypeVar("_T")


def smoke(real: _T, tiny: _T) -> _T:
    """``real`` (the benchmark's size), or ``tiny`` under BENCH_SMOKE=1."""
    return tiny if SMOKE else real


def pytest_configure(config):
    if SMOKE:
        # toy sizes gain nothing from a thread pool, and on a shared CPU its spin-waits made one
        # forward of the default model 25x slower (3.7 s against 0.14 s beside a 2-thread job)
        import torch
        torch.set_num_threads(1)

_SPECS: dict[str, tuple[str, str, float]] = {}
_FLOP_SPECS: dict[str, tuple[str, str]] = {}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _SPECS.update(getattr(item.module, "RATIOS", {}))
        _FLOP_SPECS.update(getattr(item.module, "FLOP_RATIOS", {}))


def _ratios(benchmarks) -> dict[str, float]:
    medians = {bench["name"]: bench["stats"]["median"]
               for bench in benchmarks}
    rates = {bench["name"]: bench["extra_info"]["flop"] / bench["stats"]["median"]
             for bench in benchmarks if "flop" in bench.get("extra_info", {})}
    out = {}
    for name, (numerator, denominator, factor) in sorted(_SPECS.items()):
        if numerator in medians and denominator in medians:
            out[name] = round(factor * medians[numerator] / medians[denominator], 4)
    for name, (test, reference) in sorted(_FLOP_SPECS.items()):
        if test in rates and reference in rates:
            out[name] = round(rates[test] / rates[reference], 4)
    return dict(sorted(out.items()))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """pytest-benchmark saves ``output_json`` after this hook: the ratios go into the same file."""
    output_json["ratios"] = _ratios(output_json["benchmarks"])
    print("\nratios:", json.dumps(output_json["ratios"], indent=1))


def median_seconds(benchmark) -> float | None:
    """This run's median time of ``benchmark``; None under --benchmark-disable (a smoke run that
    only checks that every benchmark still runs)."""
    return None if benchmark.stats is None else benchmark.stats.stats.median
