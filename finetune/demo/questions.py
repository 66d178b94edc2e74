"""Questions and answers about a `shapes.Scene`, each kind phrased many ways, plus a held-out set of phrasings.

Five question kinds: colour, shape, count, position (single shapes only) and describe. Answers are short and
canonical ('red', 'triangle', '3', 'top left', 'three red circles') so that exact match is a fair score.
Every phrasing is a template filled with varied nouns ('shape', 'object', 'thing', ...), image words, prefixes,
suffixes, casing and punctuation. The `UNSEEN` templates never appear in training (not even in the tokenizer's
corpus); `vlmgate demo eval` uses them to measure how the model copes with wording it never read.

    rng = numpy.random.default_rng(0)
    ex = sample_example(rng)                       # training distribution, balanced over kinds
    ex = sample_example(rng, kind="count", phrasing="unseen", style="ood")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmgate.finetune.demo.shapes import (
    COLOURS,
    COUNT_WORDS,
    MAX_COUNT,
    PLURALS,
    POSITIONS,
    SHAPES,
    Scene,
    sample_scene,
)

KINDS = ("colour", "shape", "count", "position", "describe")

# {col} colour/color, {o} noun (plural when several shapes), {be} is/are, {it} it/they, {img} image word,
# {os} plural noun, {do} does/do, {options} a choice of two or three answers, the right one among them ("red or
# blue", "a circle, a square or a triangle", "two or three", "on the left or in the center"): people ask either/or
# questions of every kind, and a model that met them only about shapes answers "red or blue?" with a shape.
TRAIN: dict[str, list[str]] = {
    "colour": [
        "What {col} {be} the {o}?", "Which {col} {be} the {o}?", "What is the {col} of the {o}?",
        "Tell me the {col} of the {o}.", "What {col} do you see?", "{Col}?", "Name the {col} of the {o}.",
        "What {col} {be} the {o} in this {img}?", "Can you tell me what {col} the {o} {be}?",
        "Identify the {col} of the {o}.", "In one word, what {col} {be} {it}?", "What {col} {be} {it}?",
        "The {o} {be} what {col}?", "Which {col} {do} the {o} have?", "What's the {col} here?",
        "{Col} of the {o}?", "Say the {col} of the {o}.", "What {col} was used for the {o}?",
        "Please name the {col}.", "What {col} {be} the {o} painted?", "Which {col} is shown in the {img}?",
        "What {col} {be} the {o} in the {img}?", "Give me the {col} of the {o}.",
        "{Be} the {o} {options}?", "{Be} {it} {options}?", "{Options}?", "Is the {col} {options}?",
    ],
    "shape": [
        "What shape {be} the {o}?", "What shape do you see?", "Which shape is in the {img}?",
        "What kind of shape {be} {it}?", "What is the shape of the {o}?", "Name the shape.",
        "Tell me the shape of the {o}.", "Shape?", "Is it a circle, a square or a triangle?",
        "What type of {o} {be} drawn?", "Which form {do} the {o} have?", "What geometric shape {be} shown?",
        "Identify the shape in this {img}.", "Circle, square or triangle?", "What shape {be} {it}?",
        "Can you tell me the shape?", "What figure is drawn in the {img}?", "The {o} {be} what shape?",
        "Which shape does the {img} show?", "In one word, what shape {be} {it}?", "Give me the shape of the {o}.",
        "What kind of {o} {be} in the {img}?", "{Be} the {o} {options}?", "{Options}?",
    ],
    "count": [
        "How many {os} are there?", "How many {os} do you see?", "How many {os} are in the {img}?",
        "Count the {os}.", "What is the number of {os}?", "Number of {os}?", "How many?", "Count them.",
        "How many {os} can you count?", "Tell me how many {os} there are.", "How many {os} does the {img} show?",
        "How many {os} are drawn?", "What's the count of {os}?", "Can you count the {os} in this {img}?",
        "How many {os} are visible?", "How many of them are there?", "Give me the number of {os}.",
        "Count the {os} in the {img}.", "How many {os} appear?", "The {img} has how many {os}?",
        "Count?", "How many {os} in total?", "Are there {options} {os}?", "{Options} {os}?",
        "Is the number of {os} {options}?",
    ],
    "position": [
        "Where is the {o}?", "Where is it?", "Where is the {o} in the {img}?", "Where is the {o} located?",
        "What is the position of the {o}?", "In which part of the {img} is the {o}?",
        "Which part of the {img} is the {o} in?", "Where can you see the {o}?", "Tell me where the {o} is.",
        "Locate the {o}.", "Position?", "Where?", "In what area of the {img} is the {o}?",
        "What is the location of the {o}?", "Where does the {o} sit?", "Which region is the {o} in?",
        "Where in the {img} is it?", "Where's the {o}?", "Give the position of the {o}.",
        "Where is the {o} placed?", "Find the {o}: where is it?", "On which side is the {o}?",
        "Which corner or side is the {o} in?", "Location of the {o}?", "Where was the {o} drawn?",
        "Is the {o} {options}?", "Is it {options}?", "{Options}?",
    ],
    "describe": [
        "Describe the {img}.", "What is in the {img}?", "What do you see?", "Describe this {img} briefly.",
        "What does the {img} show?", "Give a short description of the {img}.", "What's in this {img}?",
        "Describe what you see.", "Caption this {img}.", "Write a short caption.", "What is shown here?",
        "Tell me what is in the {img}.", "Summarise the {img}.", "What can you see in this {img}?",
        "Briefly, what is drawn?", "Describe it.", "What is this?", "Explain what the {img} contains.",
        "Describe the {img} in a few words.", "What is drawn in the {img}?",
    ],
}  # fmt: skip

UNSEEN: dict[str, list[str]] = {
    "colour": [
        "Could you let me know the {col} of the {o} shown?", "I wonder what {col} {it} {be}.",
        "Which paint {col} went on the {o}?", "What {col} would you call the {o}?",
        "hey what {col} {be} that {o}", "Of what {col} {be} the {o}, please?",
    ],
    "shape": [
        "Could you name the form of the {o} shown?", "I wonder which shape {it} {be}.",
        "What sort of figure {be} that?", "Is that a square, circle or triangle?",
        "hey what shape {be} that {o}", "What outline {do} the {o} have?",
    ],
    "count": [
        "Could you tell me the total number of {os} shown?", "I wonder how many {os} are here.",
        "What is the total of {os} in this {img}?", "hey how many {os} r there",
        "Please count every {o1} you see.", "How many {os} has the {img} got?",
    ],
    "position": [
        "Could you say whereabouts the {o} lies?", "I wonder where the {o} ended up.",
        "Point out the spot where the {o} is.", "hey where r u seeing the {o}",
        "What part of the {img} contains the {o}?", "Is the {o} up, down, left, right or in the middle?",
    ],
    "describe": [
        "Could you sum up this {img} for me?", "I wonder what this {img} depicts.", "hey whats in the pic",
        "Give me a brief caption for what's shown.", "What's drawn in here?", "Tell me about this {img}.",
    ],
}  # fmt: skip

NOUNS = ("shape", "object", "thing", "figure", "item")
IMAGE_WORDS = ("image", "picture", "photo", "pic", "drawing")
PREFIXES = ("", "", "", "", "Hi! ", "Please, ", "Quick question: ", "Hey, ", "OK, ", "Look at the {img}. ",
            "Question: ", "So ")  # fmt: skip
SUFFIXES = ("", "", "", "", " Be brief.", " Please.", " Thanks!", " Short answer please.", " Keep it short.")


@dataclass(frozen=True)
class Example:
    """One question about one scene, with its canonical answer. image_first: image part before the text."""

    scene: Scene
    kind: str
    question: str
    answer: str
    image_first: bool = True


def as_turns(row: Example | list[Example]) -> list[Example]:
    """A training or evaluation row as the turns of a conversation: one example is a conversation of one turn."""
    return row if isinstance(row, list) else [row]


def answer_for(scene: Scene, kind: str) -> str:
    """The canonical answer to a question of this kind about this scene."""
    if kind == "colour":
        return scene.colour
    if kind == "shape":
        return scene.shape
    if kind == "count":
        return str(scene.count)
    if kind == "position":
        if scene.position is None:
            raise ValueError("position questions need a single shape")
        return scene.position
    if kind == "describe":
        return scene.describe()
    raise ValueError(f"unknown question kind {kind!r}; choose from {KINDS}")


# How a choice offers each answer ("Is it in the top left or on the right?").
POSITION_PHRASES = {p: ("at the " if p in ("top", "bottom") else "on the " if p in ("left", "right") else "in the ") + p
                    for p in POSITIONS}  # fmt: skip


def offers_choice(template: str) -> bool:
    return "{options}" in template.lower()


def choices(rng: np.random.Generator, kind: str, answer: str, plural: bool) -> str:
    """Two or three answers of this kind, the right one among them, in random order: 'red, blue or green'."""
    if kind == "colour":
        vocabulary = list(COLOURS)
    elif kind == "shape":
        vocabulary = list(SHAPES)
    elif kind == "count":
        vocabulary = [str(n) for n in range(1, MAX_COUNT + 1)]
    elif kind == "position":
        vocabulary = list(POSITIONS)
    else:
        raise ValueError(f"no choice questions of kind {kind!r}")
    others = [v for v in vocabulary if v != answer]
    picked = [answer, *rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]
    picked = [str(v) for v in rng.permutation(picked)]
    if kind == "shape":
        picked = [PLURALS[v] if plural else ("an " if v[0] in "aeiou" else "a ") + v for v in picked]
    elif kind == "count" and rng.random() < 0.5:
        picked = [COUNT_WORDS[int(v)] for v in picked]
    elif kind == "position":
        picked = [POSITION_PHRASES[v] for v in picked]
    return ", ".join(picked[:-1]) + " or " + picked[-1]


def _pick(rng: np.random.Generator, options):
    """rng.choice(options) for a sequence, the same draw from the same stream, without its array round trip (a
    sixth of the cost: a question is phrased for every training row)."""
    return options[int(rng.integers(len(options)))]


def phrase(rng: np.random.Generator, kind: str, count: int, phrasing: str = "train", answer: str | None = None) -> str:
    """A random wording of a question of this kind about a scene with `count` shapes (a choice question needs the
    answer, to offer it among others; without one, no choice template is drawn)."""
    templates = (TRAIN if phrasing == "train" else UNSEEN)[kind]
    if answer is None:
        templates = [t for t in templates if not offers_choice(t)]
    template = _pick(rng, templates)
    noun = _pick(rng, NOUNS[1:] if kind == "shape" else NOUNS)
    plural = count > 1
    plural_noun = "things" if noun == "thing" else noun + "s"
    slots = {
        "col": _pick(rng, ("colour", "color")),
        "o": plural_noun if plural else noun,
        "o1": noun,
        "os": plural_noun,
        "be": "are" if plural else "is",
        "do": "do" if plural else "does",
        "it": "they" if plural else "it",
        "img": _pick(rng, IMAGE_WORDS),
    }
    slots["Col"], slots["Be"] = slots["col"].capitalize(), slots["be"].capitalize()
    if offers_choice(template):
        slots["options"] = choices(rng, kind, str(answer), plural)
        slots["Options"] = slots["options"][0].upper() + slots["options"][1:]
    text = (_pick(rng, PREFIXES) + template + _pick(rng, SUFFIXES)).format(**slots)
    # People type freely: sometimes all lower case, sometimes without the closing punctuation.
    if rng.random() < 0.2:
        text = text.lower()
    if rng.random() < 0.15:
        text = text.rstrip("?.!")
    return text


def sample_example(
    rng: np.random.Generator, kind: str | None = None, *, phrasing: str = "train", style: str = "train"
) -> Example:
    """A balanced random example: kinds uniform, counts uniform (position questions always show one shape)."""
    if phrasing not in ("train", "unseen"):
        raise ValueError(f"phrasing must be 'train' or 'unseen', got {phrasing!r}")
    kind = kind or str(rng.choice(KINDS))
    count = 1 if kind == "position" else int(rng.integers(1, MAX_COUNT + 1))
    return ask(rng, sample_scene(rng, count=count, style=style), kind, phrasing=phrasing)


def may_share_image(first: str, then: str) -> bool:
    """Whether questions of these two kinds may be asked about one image in one conversation, so that no answer can
    be read off the other and no kind loses its balance: a description (colour, shape and count at once) is asked
    alone, and a position question (single shapes only) never with a count question (counts would lose balance)."""
    return first != then and "describe" not in (first, then) and {first, then} != {"count", "position"}


def ask(rng: np.random.Generator, scene: Scene, kind: str, *, phrasing: str = "train") -> Example:
    """A question of this kind about a given scene (the image goes first in 85% of the turns, as most UIs do)."""
    answer = answer_for(scene, kind)
    return Example(scene, kind, phrase(rng, kind, scene.count, phrasing, answer), answer,
                   image_first=bool(rng.random() < 0.85))  # fmt: skip


def add_noise(rng: np.random.Generator, question: str, max_words: int = 3) -> str:
    """The question with 1..max_words made-up words inserted at random places (training-time augmentation).

    People use words the model never read ("whereabouts", "depicts"); its tokenizer splits them into pieces
    the model never saw in a question either. Made-up words train it to find the question's cue words
    ("where", "how many", "colour") whatever surrounds them, without teaching it any real word."""
    words = question.split()
    for _ in range(int(rng.integers(1, max_words + 1))):
        letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(2, 10)))
        words.insert(int(rng.integers(len(words) + 1)), "".join(letters))
    return " ".join(words)


def answer_vocabulary() -> list[str]:
    """Every answer word, so that the tokenizer can learn each as a single token."""
    words = [*COLOURS, *SHAPES, *PLURALS.values(), *COUNT_WORDS[1 : MAX_COUNT + 1], "a", "an"]
    words += [str(n) for n in range(1, MAX_COUNT + 1)]
    words += sorted({w for p in POSITIONS for w in p.split()})
    return words


def tokenizer_corpus() -> list[str]:
    """Lines for the BPE trainer: training templates and answers (never the UNSEEN templates)."""
    lines = [t for ts in TRAIN.values() for t in ts] + list(PREFIXES) + list(SUFFIXES)
    lines += [*NOUNS, *IMAGE_WORDS, "colour", "color", "shapes", "objects", "things", "figures", "items"]
    # Answers start a line in the chat template, with no leading space; repeat them so their merges win.
    lines += answer_vocabulary() * 20
    lines += [f"the {p}" for p in POSITIONS] * 5 + list(POSITION_PHRASES.values()) * 5
    lines += [f"{n} {c} {s}" for n in COUNT_WORDS[2 : MAX_COUNT + 1] for c in COLOURS for s in PLURALS.values()]
    return lines
