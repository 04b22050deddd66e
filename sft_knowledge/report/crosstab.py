"""The cross-tabulation of the two ways to sort facts, the paper's D-levels x Gekhman et al.'s SliCK categories, as
Markdown for report.md. It reads the plain counts slick.cross_tab writes into results.json, names and order included,
so the report needs neither the model code nor torch."""
from __future__ import annotations

from .layout import markdown


def category_title(name: str) -> str:
    """A category as Gekhman et al. write it: maybe_known -> MaybeKnown."""
    return "".join(word.capitalize() for word in name.split("_"))


def cross_tab_markdown(counts: dict[str, dict[str, int]]) -> list[str]:
    """One split's counts (D-level -> category -> facts) as a table: a row per level, a column per category, totals."""
    categories = list(next(iter(counts.values())))
    rows = [[level, *(str(row[c]) for c in categories), str(sum(row.values()))] for level, row in counts.items()]
    totals = [sum(row[c] for row in counts.values()) for c in categories]
    return markdown(["level", *map(category_title, categories), "all"], rows + [["all", *map(str, totals), str(sum(totals))]])


def cross_tab_section(table: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """Every split's table (slick.cross_tab) under a line naming the split, in the table's order."""
    return [line for split, counts in table.items() for line in (f"D_{split}:", "", *cross_tab_markdown(counts))]
