"""The skeleton of every target that computes vector groups (caa, pi, pi_caa, melbo), callable
with plain values: skip the groups that are current, load and check the model once, compute each
group, write it with its provenance (docs/DESIGN.md, "The store").

``RunContext`` says which model a job loads and which store and behaviour its groups go to; a
runner builds it from its arguments (``steerlab.cli.options.context``), Python builds it directly."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.parallel import ranks
from steerlab.base.progress import say, say_skipped, step
from steerlab.lm.model import LoadedModel, load_model
from steerlab.lm.site import Site, resolve_site
from steerlab.questions.cloze_form import cloze_items
from steerlab.questions.data import Item
from steerlab.questions.orders import answers_in_order
from steerlab.store import (
    Checkpoint,
    VectorGroup,
    code_version,
    is_current,
    now,
    run_attrs,
    store_key,
    vectors_path,
    write_vector_group,
    writing,
)

SITE_WORDS = {"mlp": "layers[S].mlp.down_proj's output", "resid": "decoder block S's output"}


@dataclass(frozen=True)
class RunContext:
    """Which model a computing target loads, how, and where its groups go."""
    store: str
    model: str  # HF id, local folder or .gguf file, as the user gave it
    behavior: str
    dtype: str = "fp32"  # resolved: fp32, bf16 or fp64 (steerlab.lm.model.resolve_dtype)
    device: str = "cpu"
    site: Site = "auto"  # mlp, resid or auto (steerlab.lm.site)
    force: bool = False  # recompute groups that are current

    def load(self) -> LoadedModel:
        with step(f"loading {self.model} ({self.dtype})"):
            return load_model(self.model, self.dtype, self.device)


@dataclass
class Job:
    """One vector group a target is asked for."""
    run: str
    source_layer: int
    settings: dict  # what the group records and is skipped on
    site: Site = field(default="")  # mlp or resid, resolved once the model is loaded
    # its partial work beside the store (set by compute_groups: the group's settings and code)
    checkpoint: Checkpoint | None = None

    def saved(self) -> dict:
        """What a killed run of this group saved (empty: start afresh)."""
        return {} if self.checkpoint is None else self.checkpoint.load()

    def save(self, arrays: dict) -> None:
        """Keep ``arrays`` as this group's partial work (rank 0 writes it)."""
        if self.checkpoint is not None and ranks().writer:
            self.checkpoint.save(arrays)


Compute = Callable[[LoadedModel, list, Job], VectorGroup]  # answers: AnswerTokens or ClozeItems


def resolve_sites(lm: LoadedModel, layers, requested: str) -> dict[int, str]:
    """The site (mlp or resid) θ goes to at each source layer, checked, and said."""
    sites = {}
    for layer in sorted(set(layers)):
        lm.check_layer(layer, "source layer")
        sites[layer] = resolve_site(lm.model, layer, requested)
    for site in sorted(set(sites.values())):
        at = [layer for layer, s in sites.items() if s == site]
        say(f"  site: θ goes to {SITE_WORDS[site]} at S = {', '.join(map(str, at))} (SITE={requested}, "
            f"{lm.attention} attention)")
    return sites


def load_checked(ctx: RunContext, items: list[Item], source_layers: list[int],
                 target_layer: int | None = None, order: str = "original", cloze: bool = False
                 ) -> tuple[LoadedModel, list, list[str], dict[int, str]]:
    """Load the model, check the layers and resolve the injection site, and find every item's
    answer tokens in ``order`` (``steerlab.questions.orders.answers_in_order``), or with ``cloze`` its cloze
    form (``steerlab.questions.cloze_form.cloze_items``); returns (model, answers or cloze items, skipped
    messages, site per source layer). Raises if no item is usable."""
    lm = ctx.load()
    sites = resolve_sites(lm, source_layers, ctx.site)
    if target_layer is not None:  # above the source layer: checked by the runner before loading
        lm.check_layer(target_layer, "target layer")
    if cloze:
        answers, skipped = cloze_items(lm.tokenizer, items)
    else:
        answers, skipped = answers_in_order(lm.tokenizer, items, order)
    say_skipped(skipped, bool(answers), "no usable prompts: every item was skipped")
    return lm, answers, skipped, sites


def compute_groups(ctx: RunContext, module: str, method: str, jobs: list[Job], items: list[Item],
                   compute: Compute, target_layer: int | None = None, order: str = "original",
                   cloze: bool = False) -> list[str]:
    """Skip the groups that are current (same settings, same code as ``module`` hashes), load
    and check the model once for the rest, compute each and write it with its provenance.
    ``compute`` gets the items' answer tokens in ``order``, or with ``cloze`` their cloze forms;
    it runs on every rank (each on its share, ``steerlab.base.parallel.ranks()``); rank 0 writes.
    Returns the store paths of the groups written."""
    key, version = store_key(ctx.model), code_version(module)
    current = ranks().same([not ctx.force and is_current(ctx.store, vectors_path(
        key, ctx.behavior, method, job.run), job.settings, version) for job in jobs])
    todo = []
    for job, is_done in zip(jobs, current):
        if is_done:
            say(f"{vectors_path(key, ctx.behavior, method, job.run)} is up to date (FORCE=1 recomputes it)")
        else:
            todo.append(job)
    if not todo:
        return []
    lm, answers, skipped, sites = load_checked(ctx, items, sorted({j.source_layer for j in todo}),
                                               target_layer, order, cloze)
    written = []
    for job in todo:
        job.site = sites[job.source_layer]
        job.checkpoint = Checkpoint(ctx.store, vectors_path(key, ctx.behavior, method, job.run),
                                    {"settings": job.settings, "version": version})
        started, t0 = now(), time.perf_counter()
        group = compute(lm, answers, job)
        seconds = time.perf_counter() - t0
        if not np.isfinite(group.vectors).all():
            raise UserError(f"{method} vectors of {job.run} are not finite; nothing written")
        group.settings = job.settings
        provenance = run_attrs(job.settings, version, started, seconds, skipped=skipped, site=job.site,
                               nproc=ranks().size)
        del provenance["settings"]  # written from group.settings
        group.attrs.update(provenance)
        if ranks().writer:
            with writing(ctx.store) as h5:
                write_vector_group(h5, lm, ctx.behavior, group)
            job.checkpoint.discard()
        path = vectors_path(lm.key, ctx.behavior, method, job.run)
        say(f"  wrote {path} ({seconds:.1f}s)")
        written.append(path)
    return written
