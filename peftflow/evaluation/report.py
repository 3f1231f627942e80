"""What an evaluation produces: each model's loss, perplexity and score, with per-example predictions."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ModelScores:
    label: str
    loss: float
    perplexity: float
    score: float
    examples: list[dict] = field(default_factory=list)  # index, prediction, reference, score
    harness: dict[str, float] = field(default_factory=dict)  # lm-eval "TASK/METRIC" -> value (evaluation/harness.py)
    # Held-out preference pairs (evaluation/pairs.py): per pair, chosen log-prob sum and tokens, rejected's;
    # and the preference scores against the reference (accuracy, margin, chosen / rejected reward).
    pairs: list[list[float]] = field(default_factory=list)
    preference: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity, "score": self.score}


@dataclass
class EvalReport:
    metric: str
    models: dict[str, ModelScores]

    def to_json(self, path: Path) -> None:
        path.write_text(
            json.dumps({"metric": self.metric, "models": {k: asdict(v) for k, v in self.models.items()}}, indent=1)
        )

    @classmethod
    def from_json(cls, path: Path) -> "EvalReport":
        raw = json.loads(Path(path).read_text())
        return cls(raw["metric"], {k: ModelScores(**v) for k, v in raw["models"].items()})

    def retention(self) -> float:
        """Distillation: the student's score as a share of the teacher's."""
        teacher = self.models["teacher"].score
        return self.models["tuned"].score / teacher if teacher else math.nan

    def flat_metrics(self) -> dict[str, float]:
        flat = {f"eval.{label}.{k}": v for label, s in self.models.items() for k, v in s.summary().items()}
        flat |= {f"harness.{label}.{k}": v for label, s in self.models.items() for k, v in s.harness.items()}
        flat |= {f"eval.{label}.preference_{k}": v for label, s in self.models.items() for k, v in s.preference.items()}
        if "teacher" in self.models:
            flat["eval.teacher_retention"] = self.retention()
        return flat
