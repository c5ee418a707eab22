"""Fit a table to the terminal's width without cutting a word: columns are shortened,
abbreviated from the middle or dropped, step by step in a given order, until it fits.

Widths follow rich's default table box: one space of padding each side of a cell and one
border between and around the columns, so a table is sum(widths) + 3 * columns + 1 wide.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rich.cells import cell_len

ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    header: str
    cells: list[str] = field(default_factory=list)
    right: bool = False

    @property
    def width(self) -> int:
        return max([cell_len(self.header)] + [cell_len(c) for c in self.cells])


Step = Callable[[list[Column], int], list[Column]]   # (columns, width) -> columns


def table_width(columns: list[Column]) -> int:
    return sum(c.width for c in columns) + 3 * len(columns) + 1


def fit(columns: list[Column], width: int, steps: list[Step]) -> list[Column]:
    """Apply `steps` in order until the table fits in `width`. A table that still does not
    fit is returned as it is (rich folds it)."""
    for step in steps:
        if table_width(columns) <= width:
            break
        columns = step(columns, width)
    return columns


def middle(text: str, width: int) -> str:
    """`text` in at most `width` characters, the middle replaced by an ellipsis: the start
    and the end of a node name (`conv_…ers.6`) tell more than either alone."""
    if cell_len(text) <= width:
        return text
    keep = max(width - 1, 2)
    head = (keep + 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]


def drop(header: str) -> Step:
    return lambda columns, width: [c for c in columns if c.header != header]


def rename(names: dict[str, str]) -> Step:
    return lambda columns, width: [replace(c, header=names.get(c.header, c.header))
                                   for c in columns]


def recompute(header: str, cells: list[str]) -> Step:
    return lambda columns, width: [replace(c, cells=cells) if c.header == header else c
                                   for c in columns]


def squeeze(header: str, floor: int, only_if_it_fits: bool = False) -> Step:
    """Abbreviate the column's cells from the middle by what the table is too wide, to no
    fewer than `floor` characters (nor the header's width). With `only_if_it_fits`, leave
    the table alone unless that makes it fit (a later step may free the room instead)."""
    def step(columns: list[Column], width: int) -> list[Column]:
        excess = table_width(columns) - width
        out = []
        for c in columns:
            if c.header == header:
                target = max(floor, cell_len(c.header), c.width - excess)
                if only_if_it_fits and c.width - target < excess:
                    return columns
                c = replace(c, cells=[middle(cell, target) for cell in c.cells])
            out.append(c)
        return out
    return step
