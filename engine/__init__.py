"""The steering-vector lab's engine, importable without the make targets.

What a user imports (the README's "From Python" runs these)::

    from engine import load_model, load_items, caa_from_pairs, score_items, SteeringVector, generate

Every module below is importable too; docs/DESIGN.md says which holds what.
"""
from engine.data import Item, load_items
from engine.generate import generate
from engine.model import DEFAULT_MODEL_DIR, LoadedModel, load_model
from engine.steering import (
    ItemScores,
    as_loaded,
    caa_from_pairs,
    load_vector,
    neutral_texts_for,
    save_vector,
    score_items,
    size_at_cost,
)
from engine.store import read_vector_groups, store_key
from engine.vector import SteeringVector

__all__ = [
    "DEFAULT_MODEL_DIR", "Item", "ItemScores", "LoadedModel", "SteeringVector", "as_loaded", "caa_from_pairs",
    "neutral_texts_for", "size_at_cost",
    "generate", "load_items", "load_model", "load_vector", "read_vector_groups", "save_vector",
    "score_items", "store_key",
]
