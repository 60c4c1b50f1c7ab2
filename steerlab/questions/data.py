"""A/B items in the project's own JSONL format, their deterministic split, and ingest; and the
prompt files (open-ended and neutral prompts, ``load_prompts``).

One JSON object per line::

    {"id": "survival-instinct-3f2a9c0d1e", "behavior": "survival-instinct",
     "question": "...\\n\\nChoices:\\n (A) Yes\\n (B) No", "positive": "(B)", "negative": "(A)",
     "split": "train", "source": "<file>:<line>"}

``positive`` is the answer showing the behaviour steered toward; the logit difference is
logit(positive) - logit(negative).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal, get_args

from steerlab.base.errors import DataError
from steerlab.base.files import write_atomically

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = get_args(SplitName)
# Share of items per split, in percent of the hash range: train 50, val 25, test 25.
SPLIT_EDGES = {"train": 50, "val": 75, "test": 100}
REQUIRED = ("id", "behavior", "question", "positive", "negative", "split")
ANSWER = re.compile(r"^\(([A-Z])\)$")
# A choice line: "(X)" at the start of a line, after spaces or tabs (orders.py reads the same lines).
CHOICE_LINE = re.compile(r"^[ \t]*\(([A-Z])\)", re.MULTILINE)


@dataclass(frozen=True)
class Item:
    id: str
    behavior: str
    question: str
    positive: str
    negative: str
    split: SplitName
    source: str = ""


def split_of(question: str) -> str:
    """Deterministic split from the question text, stable across machines and Python versions."""
    bucket = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % 100
    return next(name for name in SPLITS if bucket < SPLIT_EDGES[name])


def item_id(behavior: str, question: str) -> str:
    return f"{behavior}-{hashlib.sha256(question.encode('utf-8')).hexdigest()[:10]}"


def choice_letters(question: str) -> set[str]:
    """Letters offered in the question's ``Choices:`` block."""
    _, _, choices = question.rpartition("Choices:")
    return set(CHOICE_LINE.findall(choices))


def check_answers(question: str, positive: str, negative: str) -> str | None:
    """What is wrong with an item's answers, or None."""
    letters = choice_letters(question)
    for role, answer in (("positive", positive), ("negative", negative)):
        match = ANSWER.match(answer)
        if not match:
            return f"{role} answer {answer!r} is not of the form '(A)'"
        if match.group(1) not in letters:
            return (f"{role} answer {answer} is not among the question's choices "
                    f"({', '.join(sorted(letters)) or 'none found'})")
    if positive == negative:
        return f"positive and negative answers are both {positive}"
    return None


def read_records(path: str | Path, required: tuple[str, ...], what: str
                 ) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) of every line of a project JSONL file, each checked to be a JSON
    object whose ``required`` fields are strings, with a known split and an id not seen before;
    the error names the file, the line and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what}")
    seen = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one object") from err
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        missing = [key for key in required if not isinstance(raw.get(key), str)]
        if missing:
            raise DataError(f"{where}: missing or non-string field(s) {', '.join(missing)}")
        if raw["split"] not in SPLITS:
            raise DataError(f"{where}: split {raw['split']!r} is not one of {', '.join(SPLITS)}")
        if raw["id"] in seen:
            raise DataError(f"{where}: duplicate id {raw['id']!r}")
        seen.add(raw["id"])
        yield where, raw


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def load_items(path: str | Path, split: str | None = None) -> list[Item]:
    """Read and validate a data file; with ``split``, keep that split only (must be non-empty)."""
    check_split(split)
    items = []
    for where, raw in read_records(path, REQUIRED, "data file (see data/README.md, or `make ingest`)"):
        problem = check_answers(raw["question"], raw["positive"], raw["negative"])
        if problem:
            raise DataError(f"{where}: {problem}")
        items.append(Item(**{key: raw[key] for key in REQUIRED}, source=raw.get("source", "")))
    if split is not None:
        items = [item for item in items if item.split == split]
        if not items:
            raise DataError(f"{path}: split {split!r} is empty")
    return items


def write_items(items: list[Item], path: str | Path) -> None:
    text = "".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in items)
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


# ---- prompt files (open-ended and neutral prompts) ----------------------------------------------

PROMPT_REQUIRED = ("id", "text", "split")
PROMPT_OPTIONAL = ("topic", "source")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    split: SplitName
    topic: str = ""
    source: str = ""


def load_prompts(path: str | Path, split: str | None = None, n: int | None = None) -> list[Prompt]:
    """Read and validate a prompt file; keep ``split`` only (if given), then the first ``n``.
    Every line is checked, also those that are not kept, so a broken file fails at once."""
    check_split(split)
    prompts = []
    for where, raw in read_records(path, PROMPT_REQUIRED, "prompt file (JSONL with fields id, text, split)"):
        if not raw["text"].strip():
            raise DataError(f"{where}: field text is empty")
        prompts.append(Prompt(**{key: raw[key] for key in PROMPT_REQUIRED},
                              **{key: str(raw.get(key, "")) for key in PROMPT_OPTIONAL}))
    if split is not None:
        prompts = [prompt for prompt in prompts if prompt.split == split]
    if not prompts:
        raise DataError(f"{path}: no prompts" + (f" in split {split!r}" if split else ""))
    return prompts[:n]
