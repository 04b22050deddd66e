"""ROUGE F-measures of one generated summary against XSum's reference (rouge-score, with its Porter stemmer, as the
summarisation literature reports them), for xsum_rouge.yaml."""
from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    scores = _SCORER.score(doc["summary"].strip(), results[0].strip())
    return {name: score.fmeasure for name, score in scores.items()}
