"""The steering-vector lab's engine, importable without the make targets.

What a user imports (the README's "From Python" runs these)::

    from engine import caa_from_pairs, at_cost, generate, score_items, load_items, SteeringVector

Every module below is importable too; docs/DESIGN.md says which holds what.
"""
from engine.costs import at_cost, neutral_texts_for, size_at_cost
from engine.data import Item, load_items
from engine.generate import generate
from engine.model import DEFAULT_MODEL_DIR, LoadedModel, as_loaded, load_model
from engine.steering import (
    ItemScores,
    caa_from_pairs,
    load_vector,
    save_vector,
    score_items,
)
from engine.store import read_vector_groups, store_key
from engine.vector import SteeringVector

__all__ = [
    "DEFAULT_MODEL_DIR", "Item", "ItemScores", "LoadedModel", "SteeringVector", "as_loaded", "at_cost",
    "caa_from_pairs", "generate", "load_items", "load_model", "load_vector", "neutral_texts_for",
    "read_vector_groups", "save_vector", "score_items", "size_at_cost", "store_key",
]
