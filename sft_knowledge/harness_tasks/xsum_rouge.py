"""ROUGE F-measures of one generated summary against XSum's reference (rouge-score, with its Porter stemmer, as the
summarisation literature reports them), for xsum_rouge.yaml."""
import sys

from absl import logging as absl_logging
from rouge_score import rouge_scorer

# rouge-score logs through absl, whose handler keeps the sys.stderr of its import and closes that stream when logging
# shuts handlers down (Hydra's logging set-up does) unless it is one of the interpreter's own: a notebook's or a test's
# captured stream would be closed under its owner. The interpreter's stderr is never closed.
absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    scores = _SCORER.score(doc["summary"].strip(), results[0].strip())
    return {name: score.fmeasure for name, score in scores.items()}
