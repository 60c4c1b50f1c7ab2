"""Run one stage of a long job and record it (`make study` uses it): the command's wall time, the
peak resident memory of its whole process tree and a digest of the command, appended to --record as
``name seconds peak_kB digest``.

    python -m steerlab.cli.stage --record results/study/store.h5.qwen2.5-0.5b.stages --name val -- make ...

`make study` keeps one record per model beside its store (the page of model M reads
``<store>.M.stages``), so the studies of several models can share one store.

A stage already recorded with the same command is skipped, so rerunning a killed study goes straight
to the stage the kill interrupted (that stage resumes from its own checkpoints). A changed command
(other sizes, another model) runs again. To force a rerun, delete the stage's line from --record.
A stage that fails records nothing and exits with the command's status.
"""
import argparse
import hashlib
import resource
import subprocess
import sys
import time
from pathlib import Path


def command_digest(command: list[str]) -> str:
    """A short digest of a command line: what a stage's record line says it ran."""
    return hashlib.sha256("\0".join(command).encode()).hexdigest()[:16]


def recorded(record: Path, name: str, digest: str) -> str | None:
    """The seconds a finished run of stage `name` with command `digest` took, from `record`, or None."""
    if not record.is_file():
        return None
    for line in record.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == name and fields[3] == digest:
            return fields[1]
    return None


def run(argv: list[str] | None = None) -> int:
    """Run the stage unless it is recorded as done with the same command; return its exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, help="file the stage's line is appended to")
    p.add_argument("--name", required=True, help="the stage's name (one word)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not args.name.isidentifier():
        p.error("give a one-word --name and a command after --")
    record, digest = Path(args.record), command_digest(command)
    seconds = recorded(record, args.name, digest)
    if seconds is not None:
        print(f"stage {args.name}: done with this command ({seconds} s, {record}); skipped "
              f"(delete its line there to run it again)", flush=True)
        return 0
    started = time.perf_counter()
    status = subprocess.run(command).returncode
    if status == 0:
        # kB on Linux: the largest process below
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        record.parent.mkdir(parents=True, exist_ok=True)
        with open(record, "a") as lines:
            lines.write(f"{args.name} {time.perf_counter() - started:.1f} {peak} {digest}\n")
    return status


if __name__ == "__main__":
    sys.exit(run())
