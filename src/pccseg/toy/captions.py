"""The captions of the toy world: a VOC-style prompt naming every object of a scene ("a photo of a dog and a
car", "two birds and a boat", about 12 % bare class words), in the report's words for the class names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..vocab import prompt_word


def _plural(cls: str) -> str:
    if cls == "person":
        return "people"
    if cls == "bus":
        return "buses"
    return prompt_word(cls) + "s"


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(classes: Sequence[str], rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """A VOC-style caption naming every object in ``classes`` (a class may repeat), and the class list
    in the order the caption names the classes (each once)."""
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    order = list(counts)
    rng.shuffle(order)
    number = {2: "two", 3: "three"}
    phrases = [_article(prompt_word(c)) if counts[c] == 1 else f"{number[counts[c]]} {_plural(c)}" for c in order]
    u = rng.random()
    if u < 0.12:   # bare class words, as some VOC prompts are
        text = " ".join(prompt_word(c) for c in order)
    elif u < 0.5:
        text = "a photo of " + _join(phrases)
    elif u < 0.62 and len(phrases) == 2:
        text = f"{phrases[0]} next to {phrases[1]}"
    elif u < 0.72:
        text = "a picture of " + _join(phrases)
    else:
        text = _join(phrases)
    return text, tuple(order)
