"""SliCK in the report (probe=slick): the cross-tabulation of the two ways to sort facts, the paper's D-levels x
Gekhman et al.'s SliCK categories, and the accuracy per category of each training bucket. It reads the plain counts
slick.cross_tab writes into results.json, names and order included, so the report needs neither the model code nor
torch."""
from __future__ import annotations

from ..data.facts import SLICK_CATEGORIES, category_title
from ..sweep import Cell, blocks
from .layout import Section, block_title, markdown, row, value_text
from .tables import SPLITS, probe_groups


def cross_tab_markdown(counts: dict[str, dict[str, int]]) -> list[str]:
    """One split's counts (D-level -> category -> facts) as a table: a row per level, a column per category, totals."""
    categories = list(next(iter(counts.values())))
    rows = [[level, *(str(row[c]) for c in categories), str(sum(row.values()))] for level, row in counts.items()]
    totals = [sum(row[c] for row in counts.values()) for c in categories]
    return markdown(["level", *map(category_title, categories), "all"], rows + [["all", *map(str, totals), str(sum(totals))]])


def cross_tab_section(table: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """Every split's table (slick.cross_tab) under a line naming the split, in the table's order."""
    return [line for split, counts in table.items() for line in (f"D_{split}:", "", *cross_tab_markdown(counts))]


def slick_sections(cells: list[Cell]) -> list[Section]:
    """Where runs recorded SliCK: the cross-tabulation of each probe (model, data, probe and SliCK settings), and the
    accuracy per category of each training bucket and size beside Table 2's per level. None without SliCK."""
    runs = [r for c in cells for r in c.runs if r.cross_tab is not None]
    if not runs:
        return []
    md = ["How many facts of each D-level (rows, the paper's probe) fall in each SliCK category (columns, Gekhman et al. "
          "2024: HighlyKnown, every greedy answer of 10 few-shot prompts right; MaybeKnown, some; WeaklyKnown, only "
          "sampled answers; Unknown, none). Both sort the base model's knowledge of the same facts.", ""]
    rows = []
    for group in probe_groups(runs, slick=True):
        table = group.runs[0].cross_tab  # the group's runs share one probe and one SliCK categorisation
        md += [f"### {group.label}", "", *cross_tab_section(table)]
        rows += [{"probe": group.label, "split": split, "level": level, **counts}
                 for split, by_level in table.items() for level, counts in by_level.items()]
    accuracy_md, accuracy_rows = [], []
    header = ["training bucket"] + [f"{s} {category_title(c)}" for s in SPLITS for c in SLICK_CATEGORIES] + ["runs"]
    for (variant, size), group in blocks([c for c in cells if any(r.acc_slick for r in c.runs)]).items():
        body = []
        for c in group:
            values = []
            for split in SPLITS:
                for category in SLICK_CATEGORIES:
                    stat = c.stat(lambda r, s=split, k=category: r.slick_accuracy(s, k))
                    values.append(value_text(stat, c))
                    if stat is not None:
                        accuracy_rows.append({"variant": variant, "size": size, "bucket": c.bucket, "split": split,
                                              "category": category, **stat.csv()})
            body.append(row(c, [c.label], values) + [str(len(c.runs))])
        accuracy_md += [block_title(variant, size), ""] + markdown(header, body)
    return [Section("SliCK categories and levels", md, "slick_levels_x_categories.csv", rows),
            Section("Accuracy per SliCK category (columns) for each training bucket (rows)", accuracy_md,
                    "slick_bucket_x_category.csv", accuracy_rows)]
