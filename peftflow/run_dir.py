"""A run dir: one training key's folder, `<output_dir>/<train key>/`, and what each step of the
pipeline leaves in it. Whoever writes or reads one of these files names it through `RunDir`, so the
layout is written down here once (the run store keeps the same names: peftflow/store.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, cfg, key: str) -> RunDir:
        """Where the training `key` of `cfg` lives."""
        return cls(cfg.resolved_output_dir() / key)

    @classmethod
    def holding(cls, output: str | Path) -> RunDir:
        """The run dir that one of its outputs lies in."""
        return cls(Path(output).parent)

    @property
    def checkpoints(self) -> Path:
        """train-adapter's resume points (the Trainer's output dir); dropped once the run ends."""
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        """train-adapter: the trained adapter (a full checkpoint for `full`)."""
        return self.path / "adapter"

    @property
    def train_result(self) -> Path:
        """train-adapter: the TrainResult as JSON (what torchrun's rank 0 hands back)."""
        return self.path / "train_result.json"

    @property
    def merged(self) -> Path:
        """merge-adapter: the adapter folded into its base."""
        return self.path / "merged"

    @property
    def eval_report(self) -> Path:
        """evaluate-models: base, fine-tune (and champion, teacher) on the held-out rows."""
        return self.path / "eval_report.json"

    @property
    def tuned_report(self) -> Path:
        """evaluate-models for a sweep variant: the fine-tune alone (the sweep scores the base once)."""
        return self.path / "tuned_report.json"

    def report(self, score_base: bool = True) -> Path:
        """What evaluate-models writes: `eval_report` when it scores the base too, else `tuned_report`."""
        return self.eval_report if score_base else self.tuned_report

    @property
    def variant_outcome(self) -> Path:
        """record-variant: a sweep variant's MLflow run, train and merge results."""
        return self.path / "sweep_variant.json"
