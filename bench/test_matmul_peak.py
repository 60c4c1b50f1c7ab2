"""This machine's matrix-multiply peak in the run's own conditions (threads, dtype): one large
square GEMM in fp32 and in bf16, through ``F.linear`` as the models call it (``torch.mm`` takes a
far slower path for bf16 on CPUs without native bf16: 0.3 against 12 GFLOP/s on the dev box). The eval and
Jacobian benchmarks divide their useful FLOP/s (bench/flops.py) by it: `eval_fraction_of_peak`,
`jtjv_fraction_of_peak`. On CPUs without native bf16 matrix instructions (AVX512-BF16, AMX) the bf16 peak is
far below the fp32 one, and with them above it: `matmul_bf16_over_fp32` says which kind of CPU ran the bench.
"""
import pytest
import torch
import torch.nn.functional as F

from bench.conftest import median_seconds, smoke
from steerlab.lm.model import cpu_bf16_native

N = smoke(2048, 128)
RATIOS = {"matmul_bf16_over_fp32": ("test_matmul_peak[fp32]", "test_matmul_peak[bf16]", 1.0)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_matmul_peak(benchmark, dtype):
    gen = torch.Generator().manual_seed(0)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = (torch.randn(N, N, generator=gen).to(torch_dtype) for _ in range(2))
    benchmark.extra_info.update(flop=2 * N ** 3, n=N, threads=torch.get_num_threads(),
                                cpu_bf16_native=cpu_bf16_native())
    benchmark.pedantic(F.linear, args=(a, b), rounds=5, warmup_rounds=1)
    seconds = median_seconds(benchmark)
    if seconds is not None:
        benchmark.extra_info["gflop_per_second"] = 2 * N ** 3 / seconds / 1e9
