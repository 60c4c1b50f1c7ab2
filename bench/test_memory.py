"""Peak memory of one JᵀJV step against k and tokens (and k in chunks), each in a fresh process
(bench/memory_step.py), with docs/usage.md's formula beside each measurement:

    linearisation ≈ 10 · L · tokens · (d + d_ff) · bytes
    step          ≈ 2.25 · k_c · L · tokens · (d + d_ff) · bytes,   k_c = min(k, JVP_CHUNK)

(L = T − S layers, bytes per element of the model's dtype). The coefficients were fitted on this
segment (d_ff = 3 d); extra_info holds measured and predicted bytes. The time is the subprocess's
and means nothing.
"""
import json
import os
import subprocess
import sys

import pytest

from bench.conftest import smoke

LINEARISATION, STEP = 10.0, 2.25


def predicted(k: int, tokens: int, chunk: int | None, layers: int, width: int, inner: int,
              bytes_per_value: int = 4) -> tuple[float, float]:
    k_c = min(k, chunk or k)
    unit = layers * tokens * (width + inner) * bytes_per_value
    return LINEARISATION * unit, STEP * k_c * unit


# BENCH_SMOKE=1: one step whole and one in chunks, a toy model each (bench/memory_step.py)
CASES = smoke([(1, 64, None), (4, 64, None), (16, 64, None), (4, 128, None), (4, 256, None),
               (16, 256, None), (16, 256, 4)],
              [(4, 16, None), (4, 16, 2)])


@pytest.mark.parametrize("k,tokens,chunk", CASES)
def test_jtjv_step_memory(benchmark, k, tokens, chunk):
    command = [sys.executable, "-m", "bench.memory_step", str(k), str(tokens)]
    command += [str(chunk)] if chunk else []
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def run():
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    measured = benchmark.pedantic(run, rounds=1, iterations=1)
    linearisation, step = predicted(k, tokens, chunk, measured["layers"], measured["width"],
                                    measured["inner"])
    benchmark.extra_info.update(measured, predicted_linearisation_bytes=linearisation,
                                predicted_step_bytes=step,
                                step_measured_over_predicted=measured["step_bytes"] / step)
