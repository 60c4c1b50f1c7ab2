"""steerlab/interop/llama_cpp.py without llama.cpp: the server's lifecycle and requests against a stand-in
(tests/fixtures/fake_llama_server.py), and the agreement figures against planted changes.
`make check-gguf` runs the real llama-server (docs/export.md, "llama.cpp round trip")."""
import sys
from pathlib import Path

import numpy as np
import pytest

from steerlab.interop.llama_cpp import (
    LlamaServerError,
    agreement,
    free_port,
    llama_server,
    next_token_logprobs,
    server_command,
    unsteered_difference,
)

FAKE = Path(__file__).parent / "fixtures" / "fake_llama_server.py"


def fake(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "-m", "model.gguf", "--port", str(port), *extra]


def test_the_command_adds_the_vector_scaled_on_loopback_without_repacking():
    command = server_command("bin/llama-server", "m.gguf", 8123, "v.gguf", 1.5, threads=2)
    assert command[:3] == ["bin/llama-server", "-m", "m.gguf"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "8123"
    assert "--no-repack" in command
    assert command[command.index("--control-vector-scaled") + 1] == "v.gguf:1.5"
    assert "--control-vector-scaled" not in server_command("s", "m.gguf", 1)


def test_the_server_answers_and_is_stopped_when_the_block_ends(tmp_path):
    port = free_port()
    with llama_server(fake(port), port, tmp_path / "log") as url:
        first = next_token_logprobs(url, [1, 2, 3], 5)
        steered_port = free_port()
        with llama_server(fake(steered_port, "--control-vector-scaled", "v.gguf:1"), steered_port,
                          tmp_path / "log2") as steered_url:
            moved = next_token_logprobs(steered_url, [1, 2, 3], 5)
    assert first == {t: -((t + 6) % 7) - 1.0 for t in range(5)}
    assert moved == {t: first[t] - 0.5 * (t % 2) for t in range(5)}
    with pytest.raises(LlamaServerError, match="no answer"):
        next_token_logprobs(url, [1], 5, timeout=2)  # nothing listens any more


def test_the_server_is_stopped_when_the_block_raises(tmp_path):
    port = free_port()
    with pytest.raises(RuntimeError, match="inside"):
        with llama_server(fake(port), port, tmp_path / "log") as url:
            raise RuntimeError("inside")
    with pytest.raises(LlamaServerError):
        next_token_logprobs(url, [1], 5, timeout=2)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    port = free_port()
    with pytest.raises(LlamaServerError, match="exited with status 3(.|\n)*failing on purpose"):
        with llama_server(fake(port, "--die"), port, tmp_path / "log"):
            pass


def test_a_server_that_never_gets_ready_is_timed_out_and_killed(tmp_path):
    port = free_port()
    with pytest.raises(LlamaServerError, match="not ready after 2 s"):
        with llama_server(fake(port, "--never-ready"), port, tmp_path / "log", start_timeout=2):
            pass
    with pytest.raises(LlamaServerError):  # it was stopped: the port no longer answers
        next_token_logprobs(f"http://127.0.0.1:{port}", [1], 5, timeout=2)


def test_a_slow_answer_is_bounded(tmp_path):
    port = free_port()
    with llama_server(fake(port, "--slow", "5"), port, tmp_path / "log") as url:
        with pytest.raises(LlamaServerError, match="within 1 s"):
            next_token_logprobs(url, [1], 5, timeout=1)


def test_agreement_pools_the_tokens_in_both_top_lists_and_compares_the_changes():
    rng = np.random.default_rng(0)
    vocab = 50
    ours_base = [np.log(rng.dirichlet(np.ones(vocab))) for _ in range(2)]
    change = [rng.normal(size=vocab) for _ in range(2)]
    ours_moved = [b + c for b, c in zip(ours_base, change)]
    noise = 0.01
    theirs_base, theirs_moved = [], []
    for b, m in zip(ours_base, ours_moved):
        listed_base, listed_moved = range(0, 30), range(10, 40)  # 20 tokens in both
        offset = rng.normal()  # a runtime's own constant shift cancels in Δ
        theirs_base.append({t: b[t] + offset for t in listed_base})
        theirs_moved.append({t: m[t] + offset + noise * np.sin(t) for t in listed_moved})
    result = agreement(theirs_base, theirs_moved, ours_base, ours_moved)
    expected_ours = np.concatenate([c[10:30] for c in change])
    expected_theirs = expected_ours + noise * np.tile(np.sin(np.arange(10, 30)), 2)
    assert result.tokens == 40
    assert result.correlation == pytest.approx(np.corrcoef(expected_ours, expected_theirs)[0, 1], abs=1e-12)
    assert result.max_abs_difference == pytest.approx(np.abs(expected_theirs - expected_ours).max(),
                                                      abs=1e-12)
    assert result.delta_scale == pytest.approx(np.abs(expected_ours).max())
    unrelated = [{t: b[t] + rng.normal() for t in range(10, 30)} for b in theirs_base]  # Δ not ours
    assert agreement(theirs_base, unrelated, ours_base, ours_moved).correlation < 0.5
    assert unsteered_difference(theirs_base, ours_base) == pytest.approx(
        max(abs(theirs_base[i][0] - ours_base[i][0]) for i in range(2)), abs=1e-12)


def test_too_few_shared_tokens_are_refused():
    with pytest.raises(LlamaServerError, match="n_probs"):
        agreement([{1: -1.0}], [{2: -1.0}], [np.zeros(3)], [np.zeros(3)])
