"""`streaming: true`: the training rows as a datasets IterableDataset, read, encoded and shuffled as the
run trains; nothing of the training split is prepared beforehand.

The stream reads the same rows as prepare (reading.py's `file_rows`, one shard per data file, so a
rank of a multi-process run reads its own files) and encodes them with the same `EncodeRows`
(encoding.py, batched `map`). The held-out rows are the first `val_size` rows with something to learn,
in file order (LLaMA-Factory's take / skip); prepare_dataset writes just those as the prepared `eval/`
split, which evaluation reads as it reads any prepared data, and names them in stats.json
(`held_out`), so the training stream leaves exactly them out. The training rows then repeat without
end (the Trainer's `max_steps` ends the run) and are shuffled in a seeded buffer of `buffer_size`
rows: the same config gives the same order, which is what lets a resumed run skip to where it was.
"""

from __future__ import annotations

import logging

from peftflow.config import RunConfig
from peftflow.data.encoding import EncodeRows, encoded_features
from peftflow.data.reading import ReadRows, SourceRows, file_rows, raw_features
from peftflow.data.sources import DatasetSource
from peftflow.errors import UserError

log = logging.getLogger("peftflow.data")

HELD_OUT_COLUMNS = ["input_ids", "labels", "prompt_ids", "reference"]  # what prepare's eval/ split holds
TRAINING_COLUMNS = ["input_ids", "labels"]


class ReadFiles:
    """The stream's generator: the valid rows of the data files it is given (gen_kwargs `files`: each a
    (source, file) index pair; datasets gives every shard of the stream one or more of them)."""

    def __init__(self, sources: list[DatasetSource], on_invalid_rows: str):
        self.sources, self.on_invalid_rows = sources, on_invalid_rows

    def __call__(self, files: list[tuple[int, int]]):
        for s, f in files:
            source = self.sources[s]
            file, rows = source.files[f], SourceRows()
            for row in file_rows(source, file, rows, ReadRows(None, [], 0, [], False, False)):
                self._invalid(file, rows)
                if row["images"] or row["rejected"]:
                    raise UserError(
                        f"streaming: {row['where']}: rows with images or preference pairs are not streamed; "
                        "set streaming: false"
                    )
                yield row
            self._invalid(file, rows)

    def _invalid(self, file, rows: SourceRows) -> None:
        """Invalid rows met so far: stop at the first (on_invalid_rows: error), else log and go on."""
        if not rows.invalid:
            return
        if self.on_invalid_rows == "error":
            _, _, message = rows.invalid[0]
            raise UserError(f"{file.shown}: invalid row: {message} (set on_invalid_rows: drop to skip such rows)")
        for _, _, message in rows.invalid:
            log.warning("%s: dropped invalid row: %s", file.shown, message)
        rows.invalid.clear()


class KeptRows:
    """The filter of the stream: rows with something to learn (encoding.py's `drop` empty), less the held-out ones."""

    def __init__(self, held_out: frozenset[str] = frozenset()):
        self.held_out = held_out

    def __call__(self, drop: str, where: str) -> bool:
        return not drop and where not in self.held_out


def encoded_stream(cfg: RunConfig, sources: list[DatasetSource], model_path: str):
    """Every valid row of `sources`, in file order, encoded (encoding.py's columns); n_shards = files."""
    from datasets import IterableDataset

    files = [(s, f) for s, source in enumerate(sources) for f in range(len(source.files))]
    rows = IterableDataset.from_generator(
        ReadFiles(sources, cfg.on_invalid_rows), features=raw_features(), gen_kwargs={"files": files}
    )
    encode = EncodeRows(cfg, model_path, pairs=False, feedback=False, images=False)
    return rows.map(
        encode,
        batched=True,
        batch_size=cfg.preprocessing_batch_size,
        remove_columns=list(raw_features()),
        features=encoded_features(False, False, False),
    )


def held_out_rows(cfg: RunConfig, sources: list[DatasetSource], model_path: str):
    """The first val_size rows with something to learn, as a datasets.Dataset (encoding.py's columns)."""
    from datasets import Dataset

    features = encoded_features(False, False, False)
    n = int(cfg.val_size)
    kept = encoded_stream(cfg, sources, model_path).filter(KeptRows(), input_columns=["drop", "where"])
    rows = list(kept.take(n + 1))  # one more: a row left to train on
    if len(rows) <= n:
        raise UserError(
            f"val_size {n}: the datasets hold only {len(rows)} rows with something to learn within cutoff_len "
            f"{cfg.cutoff_len}, and none would be left to train on; lower val_size or add data"
        )
    return Dataset.from_list(rows[:n], features=features)


def training_stream(cfg: RunConfig, sources: list[DatasetSource], model_path: str, held_out: list[str]):
    """The rows the run trains on: kept, not held out, repeated without end, shuffled (seed, buffer_size)."""
    kept = encoded_stream(cfg, sources, model_path)
    kept = kept.filter(KeptRows(frozenset(held_out)), input_columns=["drop", "where"])
    return kept.select_columns(TRAINING_COLUMNS).repeat(None).shuffle(seed=cfg.seed, buffer_size=cfg.buffer_size)
