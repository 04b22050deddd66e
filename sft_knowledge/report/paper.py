"""The paper's published numbers (`sft_knowledge/paper_results.json`), looked up for a cell whose setting the paper ran:
EntityQuestions, one of its models, full fine-tuning, and each table's size, restoration strategy and region."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..sweep import Cell, bucket_name

PAPER_RESULTS = Path(__file__).parent.parent / "paper_results.json"  # a copy of ../shared/reference/, plus Tables 6, 9-11 and Figure 2's text
PAPER_SPLITS = {"train": "train", "test": "test", "testood": "test_ood"}  # our split names -> the paper file's


def range_diff(ours: float, lo: float, hi: float) -> float:
    """Ours against a published range: 0 inside it, else the signed distance to its nearer end."""
    return ours - hi if ours > hi else ours - lo if ours < lo else 0.0


class Paper:
    def __init__(self, path: Path = PAPER_RESULTS):
        self.data = json.loads(path.read_text())
        self._models = {self._norm(k): k for k in self.data["bucket_sizes"] if not k.startswith("_")}

    @staticmethod
    def _norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("meta")

    def base_model(self, config: dict) -> str | None:
        """The paper's name for this setting's base model on EntityQuestions (e.g. llama3_8b), else None."""
        if config["data"]["name"] != "entityquestions":
            return None
        return self._models.get(self._norm(config["model"]["name"]))

    def model(self, config: dict) -> str | None:
        """As `base_model`, for a setting the paper fine-tuned: full fine-tuning only."""
        return self.base_model(config) if config["train"]["method"] == "full" else None

    def _llama3_8b(self, cell: Cell) -> bool:
        return self.model(cell.config) == "llama3_8b"

    def _top_restoration(self, cell: Cell) -> bool:
        """Tables 3, 4, 6, 9 and 10: LLaMA-3-8B, top-k restoration of the transformer region, selected over the whole
        region at once (`restore.scope` global; results from before the key are global)."""
        restore = cell.config["restore"]
        return (self._llama3_8b(cell) and restore["strategy"] == "top" and restore["region"] == "transformer"
                and restore.get("scope", "global") == "global")

    def table1(self, config: dict, split: str) -> list[int] | None:
        """Tables 1 and 8: the base model's level counts D-0..D-4 in one split."""
        model = self.base_model(config)
        return self.data["bucket_sizes"][model][PAPER_SPLITS[split]] if model else None

    def table2(self, cell: Cell, split: str, level: int | None) -> float | None:
        """Table 2: 1,920 facts per bucket; `level` None for the macro mean."""
        rows = self.data["table2_size1920_by_train_bucket"].get(self.model(cell.config) or "", {})
        row = rows.get(bucket_name(cell.bucket)) if cell.size == 1920 else None
        if row is None:
            return None
        return row[f"acc_{split}"] if level is None else row[f"acc_{split}_level"][level]

    def _by_ratio(self, table: str, column: str, cell: Cell, ratio: float) -> float | None:
        t = self.data[table]
        if not (self._top_restoration(cell) and ratio in t["ratios"]):
            return None
        values = t[column].get(str(cell.size), {}).get(bucket_name(cell.bucket))
        return None if values is None else values[t["ratios"].index(ratio)]

    def table4(self, cell: Cell, split: str, ratio: float) -> float | None:
        return self._by_ratio("table4_restoration_llama3_8b", f"acc_{split}", cell, ratio)

    def table6(self, cell: Cell, ratio: float) -> float | None:
        return self._by_ratio("table6_train_acc_llama3_8b", "acc_train", cell, ratio)

    def table5(self, cell: Cell, column: str, ratio: float) -> float | None:
        """Table 5 (LLaMA-3-8B, top-k restoration): GSM8K accuracy (`column` gsm8k) or XSum ROUGE-L (xsum_rougeL)
        after restoring `ratio` percent, beside ours where the harness scored every document (no eval.harness.limit);
        the paper does not say which SFT set, so beside every bucket and size."""
        t = self.data["table5_general_llama3_8b"]
        harness = cell.config.get("eval", {}).get("harness", {})
        if not (self._top_restoration(cell) and harness.get("limit") is None and ratio in t["ratios"]):
            return None
        return t[column][t["ratios"].index(ratio)]

    def table3(self, cell: Cell, top_percent: int) -> tuple[float, float] | None:
        """Table 3 gives the range over the 10 LLaMA-3-8B models (5 buckets x 240 and 1,920 facts)."""
        t = self.data["table3_update_concentration_llama3_8b"]
        if not (self._llama3_8b(cell) and cell.size in (240, 1920) and top_percent in t["top_percent"]):
            return None
        i = t["top_percent"].index(top_percent)
        return t["share_min"][i], t["share_max"][i]

    def table7(self, config: dict, row: str) -> tuple[float, float] | None:
        """Table 7 (LLaMA-3-8B on EntityQuestions): (Acc_test, Acc_testood) of one strategy row."""
        return tuple(self.data["table7_strategies_llama3_8b"][row]) if self.base_model(config) == "llama3_8b" else None

    def restored_share(self, cell: Cell, by: str, key: str) -> float | None:
        """Tables 9 (`by` layer) and 10 (`by` module): where the restored scalars sit. The paper does not say at which
        bucket, size and ratio, so its number stands beside every LLaMA-3-8B top-k cell."""
        table = {"layer": "table9_restored_share_by_layer_llama3_8b", "module": "table10_restored_share_by_module_llama3_8b"}[by]
        return self.data[table]["share"].get(key) if self._top_restoration(cell) else None

    def table11(self, cell: Cell, block: str) -> float | None:
        """Table 11: Acc_test after restoring one block of 4 layers (the paper's 240-fact models)."""
        t = self.data["table11_layer_blocks_llama3_8b"]
        if not (self._llama3_8b(cell) and cell.size == t["size"] and cell.config["restore"]["region"] == "transformer"):
            return None
        return t["acc_test"].get(block, {}).get(bucket_name(cell.bucket))

    def figure2(self) -> dict[str, float]:
        """The paper's text on Figure 2 (LLaMA-3-8B, Acc_test): D-0's drop from 240 to 1,920 facts, the D-0 vs D-2 gap
        at 1,920 and its ratio to the gap at 240, the largest drop from 240 to 1,920."""
        return {k: v for k, v in self.data["figure2_claims_llama3_8b"].items() if not k.startswith("_")}
