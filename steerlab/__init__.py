"""The steering-vector lab's engine, importable without the make targets.

What a user imports (the README's "From Python" runs these)::

    from steerlab import caa_from_pairs, at_cost, generate, score_items, load_items, SteeringVector

Every module below is importable too; docs/DESIGN.md says which holds what.
"""
from steerlab.lm.generate import generate
from steerlab.lm.model import DEFAULT_MODEL_DIR, LoadedModel, as_loaded, load_model
from steerlab.lm.vector import SteeringVector
from steerlab.measure.cost import at_cost, neutral_texts_for, size_at_cost
from steerlab.questions.data import Item, load_items
from steerlab.steering import (
    ItemScores,
    caa_from_pairs,
    load_vector,
    save_vector,
    score_items,
)
from steerlab.store import read_vector_groups, store_key

__all__ = [
    "DEFAULT_MODEL_DIR", "Item", "ItemScores", "LoadedModel", "SteeringVector", "as_loaded", "at_cost",
    "caa_from_pairs", "generate", "load_items", "load_model", "load_vector", "neutral_texts_for",
    "read_vector_groups", "save_vector", "score_items", "size_at_cost", "store_key",
]
