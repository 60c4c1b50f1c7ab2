"""Ratios between benchmarks measured in the same run, written into bench/results/latest.json.

A benchmark module declares ``RATIOS = {name: (numerator_test, denominator_test, factor)}``;
the ratio is factor × median(numerator) / median(denominator), from pytest-benchmark's own
statistics of this run. ``make bench`` has pytest-benchmark write its JSON to
bench/results/latest.json, with the ratios added as one flat object under "ratios".
"""
from __future__ import annotations

import json

_SPECS: dict[str, tuple[str, str, float]] = {}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _SPECS.update(getattr(item.module, "RATIOS", {}))


def _ratios(benchmarks) -> dict[str, float]:
    medians = {bench["name"]: bench["stats"]["median"]
               for bench in benchmarks}
    out = {}
    for name, (numerator, denominator, factor) in sorted(_SPECS.items()):
        if numerator in medians and denominator in medians:
            out[name] = round(factor * medians[numerator] / medians[denominator], 4)
    return out


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """pytest-benchmark saves ``output_json`` after this hook: the ratios go into the same file."""
    output_json["ratios"] = _ratios(output_json["benchmarks"])
    print("\nratios:", json.dumps(output_json["ratios"], indent=1))
