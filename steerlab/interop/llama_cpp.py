"""llama.cpp's own ``llama-server`` as a check of the GGUF export (``make check-gguf``).

The exported control vector is only right if the program that consumes it adds θ where this
project does: after decoder layer S (``steerlab.interop.export.gguf_direction_index``). The check runs the
server on 127.0.0.1 with the model's own GGUF file, once without a control vector and once per
exported file, asks each for the next-token log-probabilities of a few prompts (given as token ids,
so both runtimes read the same tokens), and compares the change steering makes there,
Δ = log p(steered) − log p(unsteered) over the top tokens, with the project's own steered model.
llama.cpp runs the quantised weights natively, so the two agree closely, not bitwise; a file whose
layer index is off by one must agree clearly worse, which is what shows the check can fail.

Every request is bounded in time, and the server is stopped however the block that uses it ends.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.lm.vector import SteeringVector


class LlamaServerError(UserError):
    """The server would not start, answered with an error, or took too long."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(binary: str | Path, model_gguf: str | Path, port: int,
                   control_vector: str | Path | None = None, scale: float = 1.0,
                   threads: int | None = None) -> list[str]:
    """The command line: one slot, no web UI, no weight repacking (this build's repacking
    segfaults on the default model's Q4_1 file), loopback only."""
    command = [str(binary), "-m", str(model_gguf), "--host", "127.0.0.1", "--port", str(port),
               "-np", "1", "-c", "2048", "--no-repack", "--no-webui", "--no-warmup"]
    if threads:
        command += ["-t", str(threads)]
    if control_vector is not None:
        command += ["--control-vector-scaled", f"{control_vector}:{scale}"]
    return command


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def llama_server(command: Sequence[str], port: int, log: Path, start_timeout: float = 120.0
                 ) -> Iterator[str]:
    """Start ``command`` (a llama-server listening on ``port``), wait until ``/health`` answers
    200, yield its base URL, and stop it on the way out (terminate, then kill after 10 s)."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        try:
            process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            raise LlamaServerError(f"cannot start {command[0]}: {err}") from err
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise LlamaServerError(f"{command[0]} exited with status {process.returncode} before "
                                       f"it was ready; the end of {log}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the model loads
            if time.monotonic() > deadline:
                raise LlamaServerError(f"{command[0]} was not ready after {start_timeout:.0f} s; "
                                       f"the end of {log}:\n{_tail(log)}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def next_token_logprobs(url: str, token_ids: Sequence[int], n_probs: int, timeout: float = 60.0
                        ) -> dict[int, float]:
    """The server's top-``n_probs`` next-token log-probabilities after ``token_ids`` (a plain
    softmax of the logits: pre-sampling probabilities, no prompt cache), as {token id: log p}."""
    body = {"prompt": [int(t) for t in token_ids], "n_predict": 1, "n_probs": int(n_probs),
            "post_sampling_probs": False, "cache_prompt": False, "temperature": 0}
    request = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            reply = json.load(answer)
    except urllib.error.HTTPError as err:
        raise LlamaServerError(f"{url}/completion answered {err.code}: "
                               f"{err.read()[:300].decode(errors='replace')}") from err
    except (urllib.error.URLError, TimeoutError) as err:
        raise LlamaServerError(f"{url}/completion gave no answer within {timeout:.0f} s: {err}") from err
    try:
        top = reply["completion_probabilities"][0]["top_logprobs"]
        return {int(entry["id"]): float(entry["logprob"]) for entry in top}
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise LlamaServerError(f"{url}/completion answered without top_logprobs: "
                               f"{json.dumps(reply)[:300]}") from err


@dataclass(frozen=True)
class Agreement:
    """How the change steering makes agrees between llama.cpp and the project, over the tokens
    both runs of llama.cpp list among their top ones (pooled over prompts)."""
    tokens: int
    correlation: float  # Pearson, of Δ log p
    max_abs_difference: float  # max |Δ_llama.cpp − Δ_project|
    delta_scale: float  # max |Δ_project|: how large the change being compared is

    def row(self, label: str) -> str:
        return (f"| {label} | {self.tokens} | {self.correlation:.3f} | {self.max_abs_difference:.3f} "
                f"| {self.delta_scale:.3f} |")


def agreement(unsteered: Sequence[dict[int, float]], steered: Sequence[dict[int, float]],
              ours_unsteered: Sequence[np.ndarray], ours_steered: Sequence[np.ndarray]) -> Agreement:
    """Pool, over prompts, the tokens in both of llama.cpp's top lists; compare its Δ log p with
    ours (``ours_*``: full log-softmax rows, one per prompt)."""
    theirs, ours = [], []
    for base, moved, our_base, our_moved in zip(unsteered, steered, ours_unsteered, ours_steered,
                                                strict=True):
        for token in sorted(set(base) & set(moved)):
            theirs.append(moved[token] - base[token])
            ours.append(float(our_moved[token] - our_base[token]))
    if len(theirs) < 3:
        raise LlamaServerError(f"only {len(theirs)} tokens are in both top lists: ask for more n_probs")
    theirs_arr, ours_arr = np.array(theirs), np.array(ours)
    return Agreement(tokens=len(theirs), correlation=float(np.corrcoef(theirs_arr, ours_arr)[0, 1]),
                     max_abs_difference=float(np.abs(theirs_arr - ours_arr).max()),
                     delta_scale=float(np.abs(ours_arr).max()))


def unsteered_difference(unsteered: Sequence[dict[int, float]], ours_unsteered: Sequence[np.ndarray]
                         ) -> float:
    """max |log p_llama.cpp − log p_project| over llama.cpp's top tokens, without steering: how
    far apart the two runtimes already are (quantised against de-quantised weights)."""
    return max(abs(lp - float(ours[token])) for base, ours in zip(unsteered, ours_unsteered, strict=True)
               for token, lp in base.items())


def project_logprobs(model: torch.nn.Module, prompts: list[tuple[int, ...]],
                     vector: SteeringVector | None) -> list[np.ndarray]:
    """The project's side: the next-token log-softmax after each prompt (token ids), fp64, with
    ``vector`` applied (None: unsteered)."""
    rows = []
    device = next(model.parameters()).device
    for ids in prompts:
        with torch.no_grad(), (nullcontext() if vector is None else vector.apply(model)):
            logits = model(torch.tensor([ids], device=device)).logits[0, -1]
        rows.append(torch.log_softmax(logits.double(), -1).cpu().numpy())
    return rows


def agreement_page(results: dict[int, Agreement], *, title: str, server: str, gguf: str, n_prompts: int,
                   n_probs: int, apart: float, layer: int) -> str:
    """The check's markdown page: one row per exported file (``results`` by layer shift: 0 is the
    right file, ±1 the shifted ones), under how far apart the runtimes are unsteered."""
    return "\n".join([
        f"# llama.cpp round trip: {title}", "",
        f"Server: {server}; model file: {gguf}; {n_prompts} prompts, top {n_probs} tokens. Unsteered "
        f"log-probs of the two runtimes differ by up to {apart:.3f}.", "",
        f"| file (θ after layer S = {layer}) | tokens | corr. of Δ log p | max abs ΔΔ "
        "| max abs Δ (project) |",
        "|---|---|---|---|---|",
        results[0].row(f"right: direction.{layer}"),
        results[-1].row(f"shifted: direction.{layer - 1}"),
        results[+1].row(f"shifted: direction.{layer + 1}"),
    ]) + "\n"
