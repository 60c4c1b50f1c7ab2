"""Run under torchrun by tests/test_parallel.py: the CAA runner, with rank 1 raising in the middle
of its share of the work (while rank 0 waits for it in a collective)."""
import steerlab.methods.caa
from steerlab.base.parallel import ranks
from steerlab.cli import caa
from steerlab.cli.options import main_guard

activations = steerlab.methods.caa.activations


def failing_activations(*args, **kwargs):
    if ranks().rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    return activations(*args, **kwargs)


steerlab.methods.caa.activations = failing_activations

if __name__ == "__main__":
    main_guard(caa.run)
