"""Yes/No polarity: the confound of cloze scores, as the letter is the confound of A/B scores.

An answer's polarity class comes from its leading words: ``yes`` (Yes, Yeah, Sure, Okay, Of
course, or Absolutely/Definitely/Certainly used as an interjection: "Absolutely!"), ``no`` (No,
Nope, Nah, Never, Not, or an affirmative word followed by "not": "Absolutely not"), ``other``
(everything else: full sentences, "Bad", "A piece of candy now"). An item's class is its
positive answer's class (docs/DESIGN.md, "Cloze and polarity"; data/README.md has the counts).

A direction that only makes the model say "No" raises the no-class items' cloze scores and
lowers the yes-class items'; the **polarity-paired mean** (``polarity_weights``: the yes and no
class means weigh the same) cancels it, as the mean over both answer orders cancels a letter. The
**polarity shift** ½(mean_no − mean_yes) measures it, as the letter shift measures the letter.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

POLARITIES = ("yes", "no", "other")
YES_WORDS = {"yes", "yeah", "yea", "yep", "yup", "sure", "okay", "ok"}
NO_WORDS = {"no", "nope", "nah", "never", "not"}
# Affirmative only as an interjection ("Absolutely!", "Definitely, I ..."), not as an adverb
# ("Definitely prefer that ..."); each turns negative when "not" follows.
INTERJECTIONS = {"absolutely", "definitely", "certainly"}
_WORD = re.compile(r"[a-z]+")


def polarity(answer: str) -> str:
    """``yes``, ``no`` or ``other`` for one answer text."""
    text = answer.strip().lower().replace("’", "'")
    words = _WORD.findall(text)
    if not words:
        return "other"
    first, second = words[0], words[1] if len(words) > 1 else ""
    if first in NO_WORDS:
        return "no"
    if first in YES_WORDS:
        return "no" if second == "not" else "yes"
    if first == "of" and second == "course":
        return "no" if len(words) > 2 and words[2] == "not" else "yes"
    if first in INTERJECTIONS:
        if second == "not":
            return "no"
        rest = text[_WORD.search(text).end():].lstrip()
        return "yes" if not rest or not rest[0].isalpha() else "other"
    return "other"


def class_masks(classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Per class present (in POLARITIES order): a boolean mask over the items."""
    classes = np.asarray(classes)
    return {name: classes == name for name in POLARITIES if (classes == name).any()}


def class_means(values: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Per class present: the mean over that class's items (the last axis of ``values``)."""
    values = np.asarray(values, dtype=np.float64)
    return {name: values[..., mask].mean(-1) for name, mask in class_masks(classes).items()}


def polarity_weights(classes: Sequence[str]) -> dict[str, float]:
    """The weight of each class present in the polarity-paired mean (they sum to 1).

    A Yes/No direction moves yes-class items one way and no-class items the other, so it cancels
    from any mean that weighs the yes and no class means equally; nothing asks more than that. The
    pair ½(mean_yes + mean_no) has the variance of a mean over m = 4·n_yes·n_no/(n_yes + n_no)
    questions (2n when both classes have n), so the pair weighs m and the other class its count:
    with equal per-question variance this is the least-variance mean that cancels the direction,
    and a class of 2 questions cannot carry a third of the headline as it did when every class
    weighed the same. A yes or no class without its partner cannot be cancelled and is left out;
    with nothing else left, the plain mean stands (and ``polarity_shift`` says None).
    """
    counts = {name: float(mask.sum()) for name, mask in class_masks(classes).items()}
    n_yes, n_no = counts.get("yes", 0.0), counts.get("no", 0.0)
    pair = 4 * n_yes * n_no / (n_yes + n_no) if n_yes and n_no else 0.0
    total = pair + counts.get("other", 0.0)
    if total == 0:
        return {name: n / sum(counts.values()) for name, n in counts.items()}
    weights = {"yes": pair / 2 / total, "no": pair / 2 / total, "other": counts.get("other", 0.0) / total}
    return {name: weights[name] for name in counts if weights[name] > 0}


def balanced_mean(values: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """The polarity-paired mean over the last axis (``polarity_weights``): a pure Yes/No effect
    cancels, and each class weighs what its questions can carry."""
    means = class_means(values, classes)
    return sum(weight * means[name] for name, weight in polarity_weights(classes).items())


def polarity_shift(values: np.ndarray, classes: Sequence[str]) -> np.ndarray | None:
    """½(mean over no-class items − mean over yes-class items); None without both classes."""
    means = class_means(values, classes)
    if "yes" not in means or "no" not in means:
        return None
    return (means["no"] - means["yes"]) / 2
