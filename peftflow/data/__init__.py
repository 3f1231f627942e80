"""Datasets: LLaMA-Factory's dataset_info.json (`sources`), row formats (`formats`), chat templates
(`templates`), tokenising and masking (`tokenize`), plain text cut into blocks (`blocks`), images,
S3 files (`cloud`), and the prepared, cached train / eval splits (`prepare`)."""

from peftflow.data.prepare import PreparedData, data_report, prepare_dataset
from peftflow.data.report import DataReport
from peftflow.data.sources import resolve_datasets
from peftflow.data.templates import end_of_turn_token_id

__all__ = ["PreparedData", "DataReport", "prepare_dataset", "data_report", "resolve_datasets", "end_of_turn_token_id"]
