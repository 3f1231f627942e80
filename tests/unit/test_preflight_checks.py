"""What a run touches outside the model, checked before it trains (peftflow/preflight_checks.py):
the registered-model name by MLflow's own rule, the optimizer and schedule built once, and the run
store probed on moto's S3 server (in this process, on loopback) and on a local path."""

from __future__ import annotations

import socket

import pytest
from transformers import SchedulerType
from transformers.training_args import OptimizerNames

from peftflow.config import RunConfig
from peftflow.errors import UserError
from peftflow.preflight_checks import build_optimizer_and_schedule, check_registered_model_name, probe_run_store


@pytest.mark.parametrize("name", ["team/summarizer", "orders:v2", "../orders"])
def test_a_registered_model_name_mlflow_refuses_is_named_before_training(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match=rf"^registry\.name: '{name}': MLflow refuses this registered-model name"):
        check_registered_model_name(name)
    check_registered_model_name("orders-summarizer_v2.1")


@pytest.mark.parametrize(
    "update, expected",
    [
        (
            {"lr_scheduler_type": "cosine_with_min_lr"},
            "lr_scheduler_type: cosine_with_min_lr cannot be built with no lr_scheduler_kwargs: One of min_lr",
        ),
        (
            {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"min_lr": 1e-5}},
            "lr_scheduler_type: warmup_stable_decay cannot be built with lr_scheduler_kwargs {'min_lr': 1e-05}: ",
        ),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "requires an eval strategy"),
        ({"optim": "galore_adamw"}, "optim: galore_adamw cannot be built here: "),
    ],
)
def test_a_schedule_or_optimizer_that_cannot_be_built_is_named(update, expected):
    with pytest.raises(UserError) as caught:
        build_optimizer_and_schedule(RunConfig(**update))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_schedules_and_optimizers_peftflow_runs_build():
    for update in (
        {},
        {"lr_scheduler_type": "linear", "warmup_ratio": 0.1},
        {"optim": "sgd", "max_steps": 5},
        {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 2, "optim": "adafactor"},
        {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
        {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 10}},
    ):
        build_optimizer_and_schedule(RunConfig(**update))


@pytest.fixture(scope="module")
def moto_s3():
    """moto's S3 server in this process (ThreadedMotoServer) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_s3, monkeypatch, tmp_path):
    """The standard AWS variables pointing at moto; no profile, config file or instance metadata."""
    for k, v in {
        "AWS_ENDPOINT_URL": moto_s3,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("PEFTFLOW_OFFLINE_STORE", raising=False)
    import boto3

    bucket = f"runs-{tmp_path.name.lower().replace('_', '-')}"[:60]
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    return bucket


def _listing(bucket: str, moto_s3: str) -> list[str]:
    import boto3

    return [
        o["Key"] for o in boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket=bucket).get("Contents", [])
    ]


def test_a_reachable_store_is_probed_and_left_clean(aws, moto_s3):
    probe_run_store(f"s3://{aws}/peftflow")
    assert _listing(aws, moto_s3) == []  # the probe object was written, read back and removed


@pytest.mark.parametrize(
    "mistake, expected",
    [
        ("bucket", "write failed: bucket not found"),
        ("no credentials", "list failed: no credentials found"),
        ("wrong credentials", "credentials refused"),
        ("endpoint", "endpoint unreachable"),
    ],
)
def test_a_store_that_cannot_be_used_is_one_line_naming_url_and_cause(aws, moto_s3, monkeypatch, mistake, expected):
    url = f"s3://{aws}/peftflow"
    if mistake == "bucket":
        url = "s3://no-such-bucket-here/peftflow"
    elif mistake == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif mistake == "endpoint":
        with socket.socket() as s:  # a loopback port nothing listens on
            s.bind(("127.0.0.1", 0))
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(UserError) as caught:
        if mistake == "wrong credentials":
            from moto.core.authorization import enable_iam_authentication

            with enable_iam_authentication():  # moto checks keys against its IAM: "testing" is unknown
                probe_run_store(url)
        else:
            probe_run_store(url)
    message = str(caught.value)
    assert message.startswith(f"storage: {url}: ") and expected in message and "\n" not in message, message
    assert "--offline-store" in message


def test_offline_store_skips_the_probe_and_the_environment_names_the_store(aws, monkeypatch):
    probe_run_store("s3://no-such-bucket-here/peftflow", offline=True)
    monkeypatch.setenv("PEFTFLOW_OFFLINE_STORE", "1")
    probe_run_store("s3://no-such-bucket-here/peftflow")
    monkeypatch.delenv("PEFTFLOW_OFFLINE_STORE")
    monkeypatch.setenv("PEFTFLOW_STORAGE", "s3://no-such-bucket-here/peftflow")
    with pytest.raises(UserError, match="^PEFTFLOW_STORAGE: s3://no-such-bucket-here/peftflow: write failed"):
        probe_run_store(None)


def test_a_local_store_path_that_cannot_be_written_is_named(tmp_path):
    probe_run_store(f"file://{tmp_path}/store")
    assert list((tmp_path / "store").rglob("*.*")) == []
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=rf"^storage: file://{tmp_path}/a-file/store: list failed: .*Not a directory"):
        probe_run_store(f"file://{tmp_path}/a-file/store")


def test_a_missing_teacher_directory_is_named_as_the_teacher(tmp_path, tiny_model):
    from peftflow.stages import get_workflow

    cfg = RunConfig(stage="distill", teacher=str(tmp_path / "no-teacher"), model_name_or_path=tiny_model)
    with pytest.raises(UserError, match=rf"^teacher: directory not found: {tmp_path}/no-teacher$"):
        get_workflow(cfg).resolve(cfg)
    cfg = RunConfig(stage="distill", teacher=tiny_model, model_name_or_path=str(tmp_path / "no-student"))
    with pytest.raises(UserError, match=r"^model_name_or_path: directory not found: "):
        get_workflow(cfg).resolve(cfg)


def test_lr_scheduler_kwargs_reach_the_schedule_that_trains(tmp_path):
    """The arguments training passes the Trainer carry lr_scheduler_kwargs: cosine_with_min_lr ends
    at its min_lr instead of 0, as LLaMA-Factory's YAML asks."""
    import torch
    from transformers import get_scheduler

    from peftflow.training.arguments import training_arguments

    cfg = RunConfig(
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-4}, learning_rate=1e-2, max_steps=8
    )
    args = training_arguments(cfg, tmp_path)
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=args.learning_rate)
    schedule = get_scheduler(
        args.lr_scheduler_type, optimizer, 0, num_training_steps=8, scheduler_specific_kwargs=args.lr_scheduler_kwargs
    )
    for _ in range(8):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(1e-4)


@pytest.mark.parametrize("name", [s.value for s in SchedulerType])
def test_every_transformers_schedule_builds_or_is_refused_naming_what_it_misses(name):
    try:
        build_optimizer_and_schedule(RunConfig(lr_scheduler_type=name))
    except UserError as e:
        assert str(e).startswith(f"lr_scheduler_type: {name} cannot be built with no lr_scheduler_kwargs: ")
        assert "\n" not in str(e)


@pytest.mark.parametrize("name", [o.value for o in OptimizerNames])
def test_every_transformers_optimizer_builds_or_is_refused_in_one_line(name):
    try:
        build_optimizer_and_schedule(RunConfig(optim=name))
    except UserError as e:
        assert str(e).startswith(f"optim: {name} cannot be built here: ") and "\n" not in str(e)
