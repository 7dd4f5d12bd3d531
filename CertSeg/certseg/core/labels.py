"""A segmenter's classes as the certificate and the measurements see them: a value and a name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND = 0
ABSTAIN = -1
"""Label of pixels on which the smoothed segmenter abstains."""


@dataclass(frozen=True)
class Label:
    value: int
    name: str


@dataclass(frozen=True)
class ClassTable:
    """Which structures each class of a segmenter stands for: the way overlapping anatomy is certified.

    A radiograph is a projection, so structures overlap (a clavicle over a lung).  The segmenter
    gives each pixel one class, and a class may stand for several structures (class 6: right lung
    under right clavicle).  Certifying the class certifies every structure it stands for, so
    the per-pixel test and its proof stay those of one class per pixel (docs/method.md §1a).
    Class 0 stands for no structure (background).
    """

    structures_of: tuple[tuple[int, ...], ...]  # index: class value; the structure values it stands for

    def __post_init__(self) -> None:
        if len(self.structures_of) < 2 or self.structures_of[0]:
            raise ValueError("a class table needs class 0 (no structure) and at least one more class")
        if len(set(map(frozenset, self.structures_of))) != len(self.structures_of):
            raise ValueError("two classes of the class table stand for the same structures")

    @classmethod
    def one_class_per_structure(cls, num_classes: int) -> ClassTable:
        """The table of a model without overlaps: class k is structure k alone."""
        return cls(((),) + tuple((value,) for value in range(1, num_classes)))

    @classmethod
    def from_card(cls, entries: list[dict] | None, num_labels: int) -> ClassTable:
        """A model card's "classes"; a card written before overlapping structures has none: one class per label."""
        if entries is None:
            return cls.one_class_per_structure(num_labels)
        if [int(entry["value"]) for entry in entries] != list(range(len(entries))):
            raise ValueError("classes must be numbered 0, 1, 2, ...")
        table = cls(tuple(tuple(int(value) for value in entry["stands_for"]) for entry in entries))
        if not set(table.structures) <= set(range(1, num_labels)):
            raise ValueError("a class stands for a structure the labels do not name")
        return table

    def card(self) -> list[dict]:
        """As a model card and a dataset card store it (JSON-ready)."""
        return [{"value": value, "stands_for": list(members)} for value, members in enumerate(self.structures_of)]

    @property
    def num_classes(self) -> int:
        return len(self.structures_of)

    @property
    def structures(self) -> tuple[int, ...]:
        return tuple(sorted({value for members in self.structures_of for value in members}))

    def classes_with(self, structure: int) -> tuple[int, ...]:
        return tuple(value for value, members in enumerate(self.structures_of) if structure in members)

    def mask(self, class_labels: np.ndarray, structure: int) -> np.ndarray:
        """Where `class_labels` (class values, ABSTAIN allowed) contain `structure`; ABSTAIN never does."""
        return np.isin(class_labels, self.classes_with(structure))

    def class_of(self, structures: set[int] | frozenset[int]) -> int:
        """The class that stands for exactly `structures`; ValueError when the table has none."""
        wanted = frozenset(structures)
        for value, members in enumerate(self.structures_of):
            if frozenset(members) == wanted:
                return value
        raise ValueError(f"no class stands for structures {sorted(wanted)}")
