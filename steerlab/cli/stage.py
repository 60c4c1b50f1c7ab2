"""Run one stage of a long job and record it (`make study` uses it): the command's wall time and the
peak resident memory of its whole process tree, appended to --record as ``name seconds peak_kB``.

    python -m steerlab.cli.stage --record results/study/store.h5.stages --name val -- make eval ...

A stage that fails records nothing and exits with the command's status, so a rerun after a kill
adds the time of the run that finished (steerlab.measure.study.stage_times sums a stage's lines).
"""
import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, help="file the stage's line is appended to")
    p.add_argument("--name", required=True, help="the stage's name (one word)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not args.name.isidentifier():
        p.error("give a one-word --name and a command after --")
    started = time.perf_counter()
    status = subprocess.run(command).returncode
    if status == 0:
        # kB on Linux: the largest process below
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a") as record:
            record.write(f"{args.name} {time.perf_counter() - started:.1f} {peak}\n")
    return status


if __name__ == "__main__":
    sys.exit(run())
