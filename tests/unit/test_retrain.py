"""Retrain decisions and the dataset event, without servers."""

from peftflow.config import RunConfig


def test_event_parameters_override_the_config_and_blanks_do_not():
    from flows.retrain import with_overrides

    cfg = RunConfig(dataset="a", dataset_dir="/d")
    assert with_overrides(cfg, "b,c", None).dataset_names == ["b", "c"]
    assert with_overrides(cfg, "", "  ") is cfg  # a missing payload key renders as ""
    assert with_overrides(cfg, None, "/e").dataset_dir == "/e"
    assert with_overrides(cfg, "b", None).fingerprint() != cfg.fingerprint()


def test_changed_fingerprints():
    from flows.retrain import changed_fingerprints

    now = {"data_fingerprint": "d1", "base_model_fingerprint": "m1", "config_fingerprint": "c1"}
    assert changed_fingerprints(now, {**now, "other": "x"}) == []
    assert changed_fingerprints(now, {**now, "data_fingerprint": "d0"}) == ["data_fingerprint"]
    assert changed_fingerprints(now, {}) == ["data_fingerprint", "base_model_fingerprint", "config_fingerprint"]


def test_dataset_updated_event():
    from flows.events import dataset_updated_event

    e = dataset_updated_event("orders", uri="s3://bucket/orders.jsonl")
    assert e.event == "peftflow.dataset.updated"
    assert e.resource.id == "peftflow.dataset.orders"
    assert e.payload == {"dataset": "orders", "dataset_dir": "", "uri": "s3://bucket/orders.jsonl"}


def test_emit_without_a_server_is_a_user_error(monkeypatch):
    import pytest
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.events import emit_dataset_updated
    from peftflow.errors import UserError

    with temporary_settings({PREFECT_API_URL: None}):
        with pytest.raises(UserError, match="PREFECT_API_URL"):
            emit_dataset_updated("orders")
