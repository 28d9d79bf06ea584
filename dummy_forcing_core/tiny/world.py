"""The tiny model's world in words: what its prompts may name and what each word means.

Coloured shapes (circle, square, triangle; small or big) move at constant velocity on a plain
or vertical-gradient background of a named colour; a prompt describes up to three of them::

    "a big red circle at top left moving right fast, a small blue square at center
     falling slowly, on a navy gradient background"

Here: the names and their values (colours 0..255, radii and speeds for a 32 px frame, unit
directions with y down, 3 x 3 start cells), :func:`spec_from_prompt` (the objects a prompt
names) and :func:`prompt_warnings` (how a prompt will not be followed as written), which the
ComfyUI nodes and the command-line demo show. Drawing the world and training on it live in
``tiny_model_tools`` (not part of the runtime).
"""
from __future__ import annotations

import re

import numpy as np

__all__ = [
    "OBJECT_COLORS", "BACKGROUND_COLORS", "SHAPES", "SIZES", "SPEEDS", "DIRECTIONS", "POSITIONS", "MAX_OBJECTS",
    "DEFAULT_PROMPT", "PROMPT_FORM", "rgb_unit", "spec_from_prompt", "prompt_warnings",
]

# Bright object colours and darker background colours (0..255), distinct names.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 40),
    "green": (50, 205, 60),
    "blue": (60, 110, 255),
    "yellow": (245, 225, 40),
    "cyan": (40, 225, 235),
    "white": (245, 245, 245),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (8, 8, 8),
    "gray": (105, 105, 105),
    "navy": (20, 28, 95),
    "maroon": (100, 25, 30),
    "olive": (85, 90, 25),
    "teal": (20, 90, 90),
}
SHAPES = ("circle", "square", "triangle")
# radius in pixels of a 32 px frame (scaled with the frame size)
SIZES = {"small": 3.5, "big": 6.0}
# pixels per frame of a 32 px frame (scaled), sampled uniformly in the range
SPEEDS = {"slowly": (0.45, 0.75), "fast": (1.1, 1.5)}
# unit direction (dx, dy) with y down, and how the prompt says it
DIRECTIONS: dict[str, tuple[float, float]] = {
    "moving right": (1.0, 0.0),
    "moving left": (-1.0, 0.0),
    "falling": (0.0, 1.0),
    "rising": (0.0, -1.0),
    "moving down right": (1.0, 1.0),
    "moving down left": (-1.0, 1.0),
    "moving up right": (1.0, -1.0),
    "moving up left": (-1.0, -1.0),
}
# 3 x 3 start cells (column, row) -> words
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left", (1, 0): "top", (2, 0): "top right",
    (0, 1): "left", (1, 1): "center", (2, 1): "right",
    (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right",
}
MAX_OBJECTS = 3  # what the shipped model was trained on (its file's data.max_objects says it too)

# Measured over seeds 0-7 (full cache and Dummy Forcing 50%): the square is found in every
# frame, starts in its cell and moves 8.6-16.4 px up-right in the first 12 frames.
DEFAULT_PROMPT = "a small yellow square at bottom left moving up right fast, on a maroon plain background"
PROMPT_FORM = ("prompt form: 'a <small|big> <red|green|blue|yellow|cyan|white> <circle|square|triangle> at <top left|"
               "top|...|bottom right> <moving right|moving up left|falling|rising|...> <fast|slowly>', up to 3 objects "
               "separated by commas, then 'on a <black|gray|navy|maroon|olive|teal> <plain|gradient> background' "
               "(docs/tiny_model.md)")


def rgb_unit(rgb) -> np.ndarray:
    """0..255 colour -> [-1, 1] float32."""
    return np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0


_CELL_OF = {words: cell for cell, words in POSITIONS.items()}


def spec_from_prompt(prompt: str) -> list[dict]:
    """Parse the objects a prompt names, in order: ``color``, ``shape``, ``size``, and where
    the prompt says them ``direction`` (unit (dx, dy), y down) and start ``cell`` ((column,
    row) of the 3 x 3 grid, from "at <position>"). Unknown words are ignored; returns a list
    of dicts with the keys that were found."""
    out = []
    for part in re.split(r",", prompt.lower()):
        words = re.findall(r"[a-z]+", part)
        d: dict = {}
        for w in words:
            if w in OBJECT_COLORS:
                d["color"] = w
            elif w in SHAPES:
                d["shape"] = w
            elif w in SIZES:
                d["size"] = w
        text = " ".join(words)
        for phrase in sorted(DIRECTIONS, key=len, reverse=True):
            if re.search(rf"\b{phrase}\b", text):
                v = np.asarray(DIRECTIONS[phrase], dtype=np.float64)
                d["direction"] = v / np.linalg.norm(v)
                break
        for place in sorted(_CELL_OF, key=len, reverse=True):
            if re.search(rf"\bat {place}\b", text):
                d["cell"] = _CELL_OF[place]
                break
        if "color" in d or "shape" in d:
            out.append(d)
    return out


def prompt_warnings(prompt: str, text, max_objects: int = MAX_OBJECTS) -> list[str]:
    """One line for each way ``prompt`` will not be followed as written by a model whose text
    encoder is ``text`` (a :class:`~dummy_forcing_core.tiny.text.TextEncoder`): empty, cut at
    the encoder's length, more objects than trained on, words it does not know."""
    out = []
    if not prompt.strip():
        out.append("the prompt is empty: the model gets no text and draws an arbitrary scene")
    dropped = text.dropped_tokens(prompt)
    if dropped:
        words = [w for w in dropped if w != ","]
        out.append(f"the prompt is cut at the text encoder's {text.config.length} tokens: {len(dropped)} tokens "
                   f"dropped ({len(words)} words: {' '.join(words)})")
    n = len(spec_from_prompt(prompt))
    if n > max_objects:
        out.append(f"the prompt names {n} objects but the model was trained on at most {max_objects}: "
                   "expect some to blur together or vanish")
    unknown = text.unknown_words(prompt)
    if unknown:
        out.append(f"words the tiny model does not know (ignored as <unk>): {', '.join(unknown)}")
    return out
