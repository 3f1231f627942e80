"""The run store on a local fsspec URL (file://, as a mounted shared volume would be): sealed
directories, never a damaged or unsealed one, and prepared data fetched on a second home instead
of tokenised again. The S3 side (moto) is in tests/integration/test_run_store.py and test_store_cache.py."""

from __future__ import annotations

import logging

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.store import MANIFEST, RunStore


def test_only_sealed_matching_directories_are_fetched(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"x" * 1000)
    (src / "sub" / "b.json").write_text("{}")
    store = RunStore((tmp_path / "store").as_uri())
    store.put_dir(src, "runs/m/k/adapter")
    assert set(store.manifest("runs/m/k/adapter")) == {"a.bin", "sub/b.json"}
    assert (
        store.get_dir("runs/m/k/adapter", tmp_path / "out") and (tmp_path / "out" / "a.bin").read_bytes() == b"x" * 1000
    )

    store.fs.pipe_file(f"{store.root}/runs/m/k/adapter/a.bin", b"x" * 500)  # half-written
    (tmp_path / "kept").mkdir()
    assert not store.get_dir("runs/m/k/adapter", tmp_path / "kept") and (tmp_path / "kept").is_dir()
    store.put_dir(src, "runs/m/k/adapter")
    store.fs.rm_file(f"{store.root}/runs/m/k/adapter/{MANIFEST}")  # upload cut short
    assert store.manifest("runs/m/k/adapter") is None and not store.get_dir("runs/m/k/adapter", tmp_path / "x")
    assert not list(tmp_path.glob(".*fetch-*"))  # no scratch left behind


def test_prepared_data_is_fetched_on_a_second_home(tiny_model, tmp_path, monkeypatch, caplog):
    cfg = RunConfig(model_name_or_path=tiny_model, val_size=4, storage=(tmp_path / "store").as_uri())
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-a"))
    first = prepare_dataset(cfg, tiny_model)
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-b"))
    with caplog.at_level(logging.INFO, logger="peftflow"):
        second = prepare_dataset(cfg, tiny_model)
    assert second.path.startswith(str(tmp_path / "home-b")) and second.fingerprint == first.fingerprint
    assert (second.train_rows, second.eval_rows) == (first.train_rows, first.eval_rows)
    assert any(r.getMessage().startswith("fetched ") for r in caplog.records)  # not tokenised again


def test_builtin_models_are_fetched_on_a_second_home_and_a_damaged_copy_rebuilt(
    tiny_model, tmp_path, monkeypatch, caplog
):
    """builtin:tiny-random sealed in the store by its recipe fingerprint: a second home fetches it
    (its builder and the SmolLM2 conversion it needs never run); a damaged stored copy is rebuilt."""
    import shutil

    from peftflow.builtin import models
    from peftflow.models.resolve import resolve_model

    # The GGUF conversion (30 s) stands in as a copy of the session's model: SmolLM2's tokenizer, all tiny-random reads.
    monkeypatch.setitem(
        models.BUILDERS,
        "smollm2-135m-instruct",
        lambda out, built: shutil.copytree(tiny_model, out, dirs_exist_ok=True),
    )
    storage = (tmp_path / "store").as_uri()
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-a"))
    first = resolve_model("builtin:tiny-random", storage=storage)
    store = RunStore(storage)
    key = f"cache/models/tiny-random/{models.recipe_fingerprint('tiny-random')}"
    assert store.manifest(key) and "model.safetensors" in store.manifest(key)

    def refuse(out, built):
        raise AssertionError("built again instead of fetched")

    for name in models.BUILDERS:
        monkeypatch.setitem(models.BUILDERS, name, refuse)
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-b"))
    second = resolve_model("builtin:tiny-random", storage=storage)
    assert second.path.startswith(str(tmp_path / "home-b")) and second.fingerprint == first.fingerprint
    assert not (tmp_path / "home-b" / "cache" / "models" / "smollm2-135m-instruct").exists()

    store.fs.pipe_file(f"{store.root}/{key}/model.safetensors", b"half")  # damaged in the store
    monkeypatch.undo()
    monkeypatch.setitem(models.BUILDERS, "smollm2-135m-instruct", refuse)  # sealed by home-a: fetched
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-c"))
    with caplog.at_level(logging.WARNING, logger="peftflow"):
        third = resolve_model("builtin:tiny-random", storage=storage)
    assert any("does not match its manifest" in r.getMessage() for r in caplog.records)
    assert third.fingerprint == first.fingerprint  # rebuilt, same seed
    assert store.get_dir(key, tmp_path / "resealed")  # and sealed again
