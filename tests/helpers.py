"""What several test modules build: tiny random models, A/B items, a synthetic eval store, and
a runner called in this process as `python -m steerlab.cli.<name>` would call it."""
from __future__ import annotations

import importlib
import io
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from steerlab.lm.model import LoadedModel
from steerlab.questions.data import Item

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16"}


def exact_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Make every RMSNorm compute in the input's dtype. HF's RMSNorm casts to fp32 inside, which
    caps an fp64 model's accuracy near 1e-7 and would hide real errors in exactness tests."""
    for module in model.modules():
        name = type(module).__name__
        if name.startswith("Gemma") and name.endswith("RMSNorm"):  # (1 + w), eps
            def forward(hidden, module=module):
                variance = hidden.pow(2).mean(-1, keepdim=True)
                return (1.0 + module.weight) * (hidden * torch.rsqrt(variance + module.eps))
            module.forward = forward
        elif name.endswith("RMSNorm"):
            def forward(hidden, module=module):
                variance = hidden.pow(2).mean(-1, keepdim=True)
                return module.weight * (hidden * torch.rsqrt(variance + module.variance_epsilon))
            module.forward = forward
    return model


def tiny_model(kind: str, tokenizer, dtype=torch.float64, layers: int = 4, width: int = 64,
               seed: int = 0) -> LoadedModel:
    """A random decoder of the given architecture, wrapped like load_model's result."""
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                  attn_implementation="sdpa")
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=width // 4))
    elif kind == "gemma2":  # sliding and full attention alternate; logits soft-capped; eager only
        model = Gemma2ForCausalLM(Gemma2Config(**{**common, "attn_implementation": "eager"},
                                               head_dim=width // 4, sliding_window=32))
    elif kind == "gemma3":  # five sliding layers to one full; norms after attention and MLP
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=width // 4, sliding_window=32,
                                                   sliding_window_pattern=3))
    else:
        raise ValueError(kind)
    model = exact_norms(model.to(dtype).eval().requires_grad_(False))
    tokenizer.padding_side = "right"
    return LoadedModel(model, tokenizer, f"tiny-{kind}", f"tiny-{kind}", DTYPE_NAMES[dtype], "cpu")


def scaled_directions(d: int, scales: tuple[float, ...] = (0.0, 2.0, -6.0, 12.0), dtype=torch.float64,
                      seed: int = 0) -> torch.Tensor:
    """θ settings [len(scales), d]: random unit directions at these signed L2 norms (0: unsteered)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(scales), d, generator=gen, dtype=dtype)
    directions /= directions.norm(dim=1, keepdim=True)
    return directions * torch.tensor(scales, dtype=dtype)[:, None]


def save_tiny(kind: str, tokenizer, folder: Path, **kwargs) -> Path:
    """A tiny random model (fp32 unless ``dtype=``) saved as a HF folder, for the runners."""
    lm = tiny_model(kind, tokenizer, **{"dtype": torch.float32, **kwargs})
    lm.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Ran:
    """What a runner did: its exit status and what it printed (as subprocess.run reports it)."""
    returncode: int
    stdout: str
    stderr: str


def run_runner(module: str, *args) -> Ran:
    """``python -m <module> <args>`` in this process: the runner's ``run`` under its
    ``main_guard``, so a user error is one line on stderr and exit status 2, and a bug is a
    traceback on stderr and status 1. Saves a Python start-up and torch import per call."""
    from steerlab.cli.options import main_guard

    runner = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", [module, *map(str, args)]), redirect_stdout(out), \
            redirect_stderr(err):
        try:
            main_guard(runner.run)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except Exception:  # a bug: reported as the interpreter would
            traceback.print_exc()
            code = 1
    return Ran(code, out.getvalue(), err.getvalue())


def make_item(question: str, positive: str = "(B)", negative: str = "(A)", split: str = "train",
              item_id: str | None = None) -> Item:
    return Item(item_id or f"t-{abs(hash(question)) % 10**8}", "test", question, positive, negative, split)



# ---- a synthetic store: every kind of group, known winners planted on val and test ---------------

KEY = "tiny"
BEHAVIOR = "survival-instinct"
N_Q = 12
SIGNED = [-8.0, -4.0, -2.0, 2.0, 4.0, 8.0]
POSITIVE = [2.0, 4.0, 8.0]
# planted: on val the best PI vector is #2 at scale -4; on test #0 at +4 would win (must not be shown)
PI_VAL_BEST, PI_TEST_BEST = (2, SIGNED.index(-4.0)), (0, SIGNED.index(4.0))


def eval_group(node, rng, name, k, scales, sign_free, layer, shift=0.0):
    diff = rng.normal(-1.0, 0.5, (k, len(scales), N_Q)) + shift * np.asarray(scales)[None, :, None] / 8
    mass = np.full(diff.shape, 0.8) - 0.05 * np.abs(np.asarray(scales))[None, :, None]
    group = node.create_group(name)
    group["logit_diff"], group["answer_mass"] = diff.astype(np.float32), mass.astype(np.float32)
    group["scales"] = np.array(scales, dtype=np.float32)
    group.attrs.update(source_layer=layer, sign_free=int(sign_free))
    return group


def write_store(path, with_pi=True, caa_layers=(3, 5, 7)):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for split in ("val", "test"):
            node = h5.create_group(f"{KEY}/{BEHAVIOR}/evals/{split}")
            node["question_ids"] = np.array([f"q{i}" for i in range(N_Q)]).astype("S")
            node["baseline_logit_diff"] = rng.normal(-1.0, 0.5, N_Q).astype(np.float32)
            node["baseline_answer_mass"] = np.full(N_Q, 0.8, dtype=np.float32)
            for layer in caa_layers:
                eval_group(node, rng, f"caa/L{layer}", 1, POSITIVE, False, layer, shift=layer / 3)
                eval_group(node, rng, f"random/L{layer}", 4, SIGNED, True, layer)
            methods = ["melbo"] + (["pi", "pi_caa"] if with_pi else [])
            for method in methods:
                eval_group(node, rng, f"{method}/L7-T20", 3, SIGNED, True, 7)
            if with_pi:
                planted = PI_VAL_BEST if split == "val" else PI_TEST_BEST
                node["pi/L7-T20/logit_diff"][planted] += 5.0
        vectors = h5.create_group(f"{KEY}/{BEHAVIOR}/vectors")
        for method in (["pi", "pi_caa"] if with_pi else []):
            group = vectors.create_group(f"{method}/L7-T20")
            group["vectors"] = rng.normal(size=(3, 8)).astype(np.float32)
            group.attrs.update(source_layer=7, target_layer=20, sign_free=1)
            group["sigmas"] = np.array([9.0, 3.0, 1.0], dtype=np.float32)
            rate = 3.0 if method == "pi" else 1.5
            group["sigmas"][...] *= rate / 3
            group["trace"] = np.logspace(0, -rate, 10)[:, None] ** np.array([1.0, 0.7, 0.4])
        melbo = vectors.create_group("melbo/L7-T20")
        melbo["vectors"] = rng.normal(size=(3, 8)).astype(np.float32)
        melbo.attrs.update(source_layer=7, target_layer=20, sign_free=0)
        melbo["trace"] = np.cumsum(rng.random((20, 3)), 0).astype(np.float32)
    return path


def add_orders(path, letter_spread: float, seed: int = 1):
    """Make a store from write_store counterbalanced: each question's logit difference becomes the
    mean of two orders that differ by ± a per-question letter preference of ``letter_spread``."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "a") as h5:
        for split in ("val", "test"):
            node = h5[f"{KEY}/{BEHAVIOR}/evals/{split}"]
            letter = rng.normal(0.0, letter_spread, N_Q)
            targets = [(node, "baseline_logit_diff", "baseline_answer_mass")] + [
                (node[f"{method}/{run}"], "logit_diff", "answer_mass")
                for method in node if isinstance(node[method], h5py.Group) for run in node[method]]
            for group, diff_name, mass_name in targets:
                diff, mass = group[diff_name][()], group[mass_name][()]
                axis = diff.ndim - 1  # the order axis goes just before the questions
                group[f"{diff_name}_by_order"] = np.stack([diff + letter, diff - letter], axis=axis)
                group[f"{mass_name}_by_order"] = np.stack([mass, mass], axis=axis)
                group.attrs["orders"] = "both"
            node.attrs.update(orders="both", behavior="survival-instinct")
    return path


N_NEUTRAL = 5


def eval_groups(node: h5py.Group):
    """(method, run, group) of every evaluated group of one split's node."""
    for method in node:
        if isinstance(node[method], h5py.Group):
            for run in node[method]:
                yield method, run, node[f"{method}/{run}"]


def add_kl(path, seed: int = 2):
    """Give every eval group of a write_store store a KL measurement that grows with |scale|
    (KL = 0.01·|scale| on average) and top-1 agreement that falls with it."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "a") as h5:
        for split in ("val", "test"):
            for _, _, group in eval_groups(h5[f"{KEY}/{BEHAVIOR}/evals/{split}"]):
                k, n_scales, _ = group["logit_diff"].shape
                scales = np.abs(group["scales"][()])[None, :, None]
                kl = 0.01 * scales * rng.uniform(0.5, 1.5, (k, n_scales, N_NEUTRAL))
                group["kl"] = kl.astype(np.float32)
                group["top1"] = np.clip(1 - kl, 0, 1).astype(np.float32)
    return path


def add_path(path, scales=(8.0, 24.0, 64.0)):
    """PI@CAA groups along the CAA path (what `make pi_caa AT_SCALES=...` writes), whose top
    subspace turns further from J(0)'s the larger the scale."""
    with h5py.File(path, "a") as h5:
        vectors = h5.require_group(f"{KEY}/{BEHAVIOR}/vectors/pi_caa")
        for scale in scales:
            group = vectors.create_group(f"L7-T20-at{scale:+g}")
            group["vectors"] = np.eye(3, 8, dtype=np.float32)
            group["sigmas"] = np.array([9.0, 3.0, 1.0], dtype=np.float32) * (1 + scale / 64)
            group["principal_angles"] = np.array([0.0, 1.0, scale], dtype=np.float32)
            group["jv_change"] = np.full(3, scale / 100, dtype=np.float32)
            group.attrs.update(source_layer=7, target_layer=20, sign_free=1, at_scale=scale)
    return path


# polarity classes of the synthetic store's questions: unequal, as in the data
CLASSES = np.array(["yes"] * 3 + ["no"] * 6 + ["other"] * 3)
POLARITY_SIGN = np.where(CLASSES == "no", 1.0, np.where(CLASSES == "yes", -1.0, 0.0))
# planted cloze effects per unit scale/8: CAA says "No" (polarity only), PI #1 moves the behaviour
CAA_POLARITY, PI_BEHAVIOUR = 0.8, 0.3


def add_cloze(path, seed: int = 3):
    """Give a write_store store cloze scores: per question a preference (nats per token) and its
    polarity class; CAA's θ is a pure Yes/No direction (± CAA_POLARITY · scale/8 by class), PI's
    vector 1 a pure behaviour direction (+ PI_BEHAVIOUR · scale/8 on every question), the rest
    noise. The letter numbers stay as they are."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "a") as h5:
        for split in ("val", "test"):
            node = h5[f"{KEY}/{BEHAVIOR}/evals/{split}"]
            baseline = rng.normal(0.2, 0.3, N_Q)
            node["baseline_cloze"] = baseline.astype(np.float32)
            node["polarity"] = CLASSES.astype("S")
            node["cloze_n_tokens"] = np.full((2, N_Q), 3, np.int32)
            for method, _, group in eval_groups(node):
                k, n_scales, _ = group["logit_diff"].shape
                unit = np.asarray(group["scales"][()])[None, :, None] / 8
                cloze = baseline + rng.normal(0, 0.02, (k, n_scales, N_Q))
                if method == "caa":
                    cloze = cloze + CAA_POLARITY * unit * POLARITY_SIGN
                if method == "pi":
                    cloze[1] += PI_BEHAVIOUR * unit[0]
                group["cloze"] = cloze.astype(np.float32)
    return path
