"""The HDF5 store, by job: ``layout`` (paths and run names), ``io`` (locked all-or-nothing writes,
migration), ``provenance`` (settings, code hashes), ``groups`` (one reader and one writer per
kind of group) and ``checkpoint`` (a group's partial work beside the store, for resuming). Import from
``steerlab.store``; the submodules are where each thing lives.

Layout (docs/DESIGN.md, "The store"); this module alone builds these paths::

    /                                                  attrs: schema_version, created, updated
    /<model>/                                          attrs: source, n_layers, d_model, dtype
    /<model>/<behavior>/vectors/<method>/<run>/        vectors [k, d] f32, sigmas, trace, ...
    /<model>/<behavior>/evals/<split>/                 question_ids, baseline logit diffs
    /<model>/<behavior>/evals/<split>/<method>/<run>/  logit_diff [k, n_scales, n_q], scales, ...
    /<model>/<behavior>/generations/<name>/            prompts, settings, completions
    /<model>/<behavior>/norms/L<S>/                    ‖h_S‖ over train prompts: the scale unit
    /<model>/neutral/<split>/                          neutral prompts + unsteered continuations
    /<model>/matrix/<method>/                          cross-behaviour Δ (make matrix)

Everything computed from a behaviour's items lives under its name, so behaviours share a store;
what depends on the model alone (neutral text) and what spans behaviours (the matrix) does not.

"""
from steerlab.store.checkpoint import *  # noqa: F401,F403
from steerlab.store.groups import *  # noqa: F401,F403
from steerlab.store.io import *  # noqa: F401,F403
from steerlab.store.layout import *  # noqa: F401,F403
from steerlab.store.provenance import *  # noqa: F401,F403
