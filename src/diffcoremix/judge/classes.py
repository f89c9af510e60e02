"""Where a judge's classes meet OUT's: by name, spelled the same way on both sides.

A name is normalised as a prompt word is made from a class folder (a leading ``NNN.`` index dropped, ``_`` as a
space, spaces collapsed), then case-folded: ``003.Golden_Retriever``, ``golden retriever`` and ``Golden Retriever``
are one class. An OUT class matches a judge class by its folder name or by its prompt word.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diffcoremix.data.classnames import prompt_name


def normalise_class_name(name: str) -> str:
    """The spelling two class names are compared in.

    Example:
        >>> normalise_class_name("001.Black_footed_Albatross")
        'black footed albatross'
    """
    return prompt_name(name).casefold()


@dataclass(frozen=True)
class ClassMap:
    """OUT's classes on the judge's side."""

    to_judge: dict[str, int]
    """OUT class folder -> the index of the same class among the judge's classes (known classes only)."""
    to_out: dict[int, str]
    """Judge class index -> OUT class folder (the judge's classes that are classes of OUT)."""
    unknown: tuple[str, ...]
    """OUT's class folders that the judge does not know: their images are not judged."""


def map_classes(out_classes: Mapping[str, str], judge_classes: Sequence[str]) -> ClassMap:
    """Match OUT's classes to a judge's by normalised name.

    Args:
        out_classes: OUT's class folders -> their prompt words, in label order.
        judge_classes: the judge's class names, in its index order.

    Example:
        >>> m = map_classes({"001.cat": "cat", "002.Sea_Lion": "Sea Lion"}, ["dog", "Cat"])
        >>> m.to_judge, m.to_out, m.unknown
        ({'001.cat': 1}, {1: '001.cat'}, ('002.Sea_Lion',))
    """
    index: dict[str, int] = {}
    for i, name in enumerate(judge_classes):
        index.setdefault(normalise_class_name(name), i)  # a repeated name: its first class
    to_judge: dict[str, int] = {}
    for folder, word in out_classes.items():
        found = index.get(normalise_class_name(folder), index.get(normalise_class_name(word)))
        if found is not None:
            to_judge[folder] = found
    to_out: dict[int, str] = {}
    for folder, i in to_judge.items():
        to_out.setdefault(i, folder)
    return ClassMap(to_judge, to_out, tuple(f for f in out_classes if f not in to_judge))
