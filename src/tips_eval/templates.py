"""Prompt templates for zero-shot classification and segmentation.

A template is a string with one ``{}`` where the class name goes (rendered with :func:`render`, not
``str.format``, so class names may contain braces).
"""

from __future__ import annotations

from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES as _OPENAI_CALLABLES

from tips.inference.open_vocab import TCL_TEMPLATES as _TCL

# open_clip stores the 80 CLIP ImageNet templates as lambdas; calling each with "{}" recovers the string.
OPENAI_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in _OPENAI_CALLABLES)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

# The 9 prompts of the official TIPS zero-shot segmentation notebook (one list, in the library).
TCL_TEMPLATES: tuple[str, ...] = _TCL

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "tcl": TCL_TEMPLATES,
}


def render(template: str, class_name: str) -> str:
    """Put ``class_name`` into the template's ``{}``."""
    return template.replace("{}", class_name)


def get_templates(spec: str) -> tuple[str, ...]:
    """A named set (``openai``, ``simple``, ``tcl``) or a text file with one template per line."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"templates {spec!r}: not one of {sorted(TEMPLATE_SETS)} and not a file")
    templates = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: expected one template per line, each with a '{{}}' for the class name; bad: {bad[:3]}")
    return templates
