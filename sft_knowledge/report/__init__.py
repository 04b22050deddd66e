"""The paper's figures and tables from a sweep: `python -m sft_knowledge.report [sweep dir ...]`.

Reads every job of one or more sweeps through `sft_knowledge.sweep` (the reader `status` and the sweep summary use too)
and writes `<first sweep dir>/report/`: `report.md` with every table and figure, one CSV per table, one PNG per
figure (the README's "The report" lists them). Runs that differ only in their seeds (`seed`, `data.seed`) form
one cell, reported as the mean and the sample standard deviation over them. Where a cell's setting is one the
paper published (EntityQuestions, one of its models, full fine-tuning; the table's size, restoration strategy and
region), the paper's number and ours minus the paper's stand beside ours; a table whose cells the sweep lacks names
the command that produces them.

  paper.py    the paper's numbers for a cell
  layout.py   how a table is written: sections, Markdown, CSV, the per-size grid
  tables.py   the paper's tables, one function each
  figures.py  the figures
  write.py    the report as a whole, and the command line
"""
from ..sweep import SweepError as ReportError  # the one-line error of every sweep reader
from .paper import Paper
from .write import main, write_report

__all__ = ["Paper", "ReportError", "main", "write_report"]
