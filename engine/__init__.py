"""The steering-vector lab's engine, importable without the make targets.

What a user imports (the README's "From Python" runs these)::

    from engine import load_model, load_items, caa_from_pairs, score_items, SteeringVector

Every module below is importable too; docs/DESIGN.md says which holds what.
"""
from engine.data import Item, load_items
from engine.generate import generate
from engine.model import DEFAULT_MODEL_DIR, LoadedModel, load_model
from engine.steering import ItemScores, SteeringVector, caa_from_pairs, score_items
from engine.store import read_vector_groups, store_key

__all__ = [
    "DEFAULT_MODEL_DIR", "Item", "ItemScores", "LoadedModel", "SteeringVector", "caa_from_pairs",
    "generate", "load_items", "load_model", "read_vector_groups", "score_items", "store_key",
]
