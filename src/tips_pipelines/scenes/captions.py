"""Caption text for rendered scenes: a detailed synthetic caption, a short one, and a noisy web-style alt-text.

The detailed caption plays the role of TIPS's PaliGemma caption (every visible object, colour, size and spatial
relation); the alt-text imitates web alt-text (partial, sometimes wrong, sometimes a file name or a generic word).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SYNONYMS: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere", "ball", "orb"),
    "cube": ("cube", "box", "block"),
    "cylinder": ("cylinder", "tube", "pillar"),
    "cone": ("cone", "cone shape", "spike"),
}
_WRONG_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "grey", "gold")
_GENERIC = ("photo", "image", "3d render", "render", "untitled", "abstract shapes", "geometric shapes",
            "wallpaper", "cgi", "3D scene", "shapes", "stock image")
_FILE_PREFIXES = ("IMG_", "DSC", "DSC_", "render_", "scene", "Screenshot_", "image")
_FILE_EXTENSIONS = (".jpg", ".png", ".JPG", ".jpeg", "")
_DECORATIONS = ("3d", "3D render of", "stock photo", "free", "hd wallpaper", "minimalist", "cgi", "toy",
                "blender", "simple")
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
NEAR, FAR = 5.0, 8.5  # metres of z-depth for "near the camera" / "in the distance"


@dataclass(frozen=True)
class ObjectFacts:
    """What a caption may say about one visible object; x is metres to the right, z the z-depth of its centre."""

    shape: str
    colour: str
    size: str
    x: float
    z: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def relation(a: ObjectFacts, b: ObjectFacts) -> str:
    """Where a is relative to b, seen from the camera: left of / right of / in front of / behind."""
    dx, dz = a.x - b.x, a.z - b.z
    if abs(dz) > 1.2 * abs(dx) and abs(dz) > 1.0:
        return "in front of" if dz < 0 else "behind"
    return "left of" if dx < 0 else "right of"


def describe(o: ObjectFacts) -> str:
    """'large red sphere', with 'near the camera' / 'in the distance' when the object is notably near or far."""
    text = f"{o.size} {o.colour} {o.shape}"
    if o.z < NEAR:
        text += " near the camera"
    elif o.z > FAR:
        text += " in the distance"
    return text


def light_phrase(light_cam: np.ndarray) -> str:
    """Sentence on where the light comes from, given its direction (3,) in camera coordinates (x, y, z)."""
    lx, ly, lz = (float(v) for v in light_cam)
    if abs(lx) >= abs(lz):
        source, shadows = ("the left", "to the right") if lx < 0 else ("the right", "to the left")
    elif lz < 0:
        source, shadows = "behind the camera", "away from the camera"
    else:
        source, shadows = "behind the objects", "towards the camera"
    low = math.degrees(math.atan2(ly, math.hypot(lx, lz))) < 30
    return f"{'Low light' if low else 'Light'} comes from {source}, so shadows fall {shadows}."


def detailed_caption(objects: list[ObjectFacts], ground: str, sky: str, light: str, rng: np.random.Generator) -> str:
    """All visible objects left to right, chained by spatial relations, then ground, sky and light."""
    setting = f"on {with_article(ground)} under {with_article(sky)}"
    if not objects:
        return f"An empty {ground} under {with_article(sky)}. {light}"
    order = sorted(objects, key=lambda o: o.x / o.z)
    verb = str(rng.choice(("stands", "sits", "rests")))
    head = order[:3]
    first = with_article(describe(head[0])).capitalize()
    if len(head) == 1:
        sentences = [f"{first} {verb} {setting}."]
    else:
        chain = f"{first} {verb} {relation(head[0], head[1])} {with_article(describe(head[1]))}"
        if len(head) == 3:
            chain += f", which is {relation(head[1], head[2])} {with_article(describe(head[2]))}"
        sentences = [f"{chain}, {setting}."]
    for i, o in enumerate(order[3:], start=3):
        anchor = min(order[:i], key=lambda p: math.hypot(p.x - o.x, p.z - o.z))
        sentences.append(f"{with_article(describe(o)).capitalize()} is {relation(o, anchor)} the {anchor.name}.")
    sentences.append(light)
    return " ".join(sentences)


def short_caption(objects: list[ObjectFacts], ground: str) -> str:
    """'Two red spheres, a blue cube and a green cylinder on a checkered grey floor.'"""
    if not objects:
        return f"An empty {ground}."
    counts: dict[str, int] = {}
    for o in sorted(objects, key=lambda o: o.x / o.z):
        counts[o.name] = counts.get(o.name, 0) + 1
    names = [with_article(name) if n == 1 else f"{_NUMBERS.get(n, str(n))} {name}s" for name, n in counts.items()]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed[0].upper()}{listed[1:]} on {with_article(ground)}."


def alt_text(objects: list[ObjectFacts], ground: str, rng: np.random.Generator) -> str:
    """Noisy web-style alt-text: a file name, a generic word, or a partial and sometimes wrong description."""
    mode = rng.random()
    if mode < 0.12 or not objects:
        name = f"{rng.choice(_FILE_PREFIXES)}{rng.integers(0, 10000):04d}"
        if objects and rng.random() < 0.5:
            return f"{name} {_partial(objects, rng, max_objects=1)}"
        return name + str(rng.choice(_FILE_EXTENSIONS))
    if mode < 0.22:
        return str(rng.choice(_GENERIC))
    text = _partial(objects, rng, max_objects=2)
    if rng.random() < 0.4:
        text = f"{rng.choice(_DECORATIONS)} {text}"
    if rng.random() < 0.25:
        text = f"{text} on {ground.split()[-1]}"
    style = rng.random()
    return text.title() if style < 0.15 else text.capitalize() if style < 0.4 else text


def _partial(objects: list[ObjectFacts], rng: np.random.Generator, max_objects: int) -> str:
    """One or two objects, colours sometimes dropped or wrong, shapes as synonyms and now and then wrong."""
    k = int(rng.integers(1, min(max_objects, len(objects)) + 1))
    picked = [objects[i] for i in sorted(rng.choice(len(objects), size=k, replace=False))]
    words = []
    for o in picked:
        shape = o.shape if rng.random() > 0.1 else str(rng.choice([s for s in SYNONYMS if s != o.shape]))
        noun = str(rng.choice(SYNONYMS[shape]))
        colour_draw = rng.random()
        colour = "" if colour_draw < 0.25 else str(rng.choice(_WRONG_COLOURS)) if colour_draw < 0.4 else o.colour
        words.append(f"{colour} {noun}".strip())
    return " and ".join(words)
