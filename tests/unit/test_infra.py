"""Work-pool templates, the compose stack and deployments/prefect.yaml, checked without a cluster:
templates are rendered with Prefect's own job-configuration templating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.templating import apply_values
from prefect.workers.base import BaseJobConfiguration

ROOT = Path(__file__).resolve().parents[2]


def render(template_file: str, job_variables: dict[str, Any]) -> dict[str, Any]:
    """What a worker builds for a flow run: variable defaults, overridden by the deployment's job
    variables, applied to job_configuration (BaseJobConfiguration.from_template_and_values)."""
    template = json.loads((ROOT / "infra" / template_file).read_text())
    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    values.update(job_variables)
    return apply_values(template["job_configuration"], values)


def placeholders(obj) -> set[str]:
    text = json.dumps(obj)
    import re

    return set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", text))


@pytest.mark.parametrize("name", ["k8s-gpu-pool.json", "docker-gpu-pool.json"])
def test_every_variable_is_referenced_in_the_job_configuration(name):
    template = json.loads((ROOT / "infra" / name).read_text())
    variables = set(template["variables"]["properties"])
    used = placeholders(template["job_configuration"])
    assert variables - used == set(), f"variables never used (silently ignored): {variables - used}"
    assert used - variables == set(), f"placeholders with no variable: {used - variables}"


def test_kubernetes_template_puts_gpu_selector_tolerations_and_shm_in_the_manifest():
    tolerations = [{"key": "gpu-pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    config = render(
        "k8s-gpu-pool.json",
        {
            "gpu_count": 4,
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
            "tolerations": tolerations,
            "shm_size": "32Gi",
            "image": "reg/peftflow:1.2",
            "cpu": "16",
            "memory": "120Gi",
            "name": "finetune-abc",
            "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        },
    )
    manifest = config["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "16", "memory": "120Gi", "nvidia.com/gpu": 4}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == tolerations
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["image"] == "reg/peftflow:1.2"
    assert manifest["metadata"]["generateName"] == "finetune-abc-"
    # the defaults alone already ask for one GPU on a GPU node
    pod = render("k8s-gpu-pool.json", {})["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]


VOLUME_SOURCES = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "hostPath", "nfs", "csi", "ephemeral"}


def check_pod(pod: dict) -> None:
    """What the API server would refuse: a mount of no volume, a volume with two sources or one
    that is not an object (no source at all is allowed: Kubernetes defaults it to emptyDir)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert len(volumes) == len(pod["volumes"])
    for v in volumes.values():
        sources = set(v) - {"name"}
        assert sources <= VOLUME_SOURCES and len(sources) <= 1 and all(isinstance(v[k], dict) for k in sources), v
    for c in pod["containers"]:
        assert all(m["name"] in volumes and m["mountPath"].startswith("/") for m in c["volumeMounts"])
        assert all(isinstance(e, dict) and set(e) <= {"name", "value", "valueFrom"} for e in c.get("env", []))


def test_kubernetes_template_puts_peftflow_home_on_a_claim_when_one_is_given():
    """Prefect drops a key whose whole value is an unset variable's placeholder, so the volume is
    `persistentVolumeClaim: {{ home_volume_claim }}`: the claim when set, no source (emptyDir) when not."""
    pod = render("k8s-gpu-pool.json", {})["job_manifest"]["spec"]["template"]["spec"]
    check_pod(pod)
    (home,) = [v for v in pod["volumes"] if v["name"] == "peftflow-home"]
    assert home == {"name": "peftflow-home"}
    (container,) = pod["containers"]
    assert {"name": "peftflow-home", "mountPath": "/data/peftflow"} in container["volumeMounts"]
    assert container["env"] == [{"name": "PEFTFLOW_HOME", "value": "/data/peftflow"}]  # the image's default

    config = render(
        "k8s-gpu-pool.json",
        {
            "home_volume_claim": {"claimName": "team-home"},
            "home_path": "/home/pf",
            "env": {"PEFTFLOW_STORAGE": "s3://b/p"},
        },
    )
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    check_pod(pod)
    (home,) = [v for v in pod["volumes"] if v["name"] == "peftflow-home"]
    assert home["persistentVolumeClaim"] == {"claimName": "team-home"}
    (container,) = pod["containers"]
    assert {"name": "peftflow-home", "mountPath": "/home/pf"} in container["volumeMounts"]
    assert {"name": "PEFTFLOW_HOME", "value": "/home/pf"} in container["env"]
    assert config["env"] == {"PEFTFLOW_STORAGE": "s3://b/p"}  # the worker prepends these to the container's list


def test_multinode_job_wires_node_rank_and_master_addr_consistently():
    """infra/k8s-multinode-job.yaml: an indexed Job of `nnodes` pods under a headless Service;
    MASTER_ADDR names pod 0 through it and the node rank comes from the completion index."""
    from peftflow.config import parse_config

    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "infra" / "k8s-multinode-job.yaml").read_text())}
    config, job, service = docs["ConfigMap"], docs["Job"], docs["Service"]
    cfg, unused = parse_config(yaml.safe_load(config["data"]["run.yaml"]), source="run.yaml")
    assert cfg.nnodes > 1 and not unused
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == cfg.nnodes
    pod = spec["template"]["spec"]
    check_pod(pod)
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # an indexed Job's pod i is named <job>-<i>: pod 0 in the Service's DNS
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(env["MASTER_PORT"]) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    script = container["args"][0]
    assert 'PEFTFLOW_NODE_RANK="$JOB_COMPLETION_INDEX"' in script
    assert "peftflow run /config/run.yaml" in script and "python -m peftflow.training.node /config/run.yaml" in script
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert (
        config_volume["configMap"]["name"] == config["metadata"]["name"] and mounts[config_volume["name"]] == "/config"
    )
    assert mounts["peftflow-home"] == env["PEFTFLOW_HOME"]


def test_docker_template_requests_gpus_through_device_requests():
    config = render("docker-gpu-pool.json", {"gpu_count": 2, "shm_size": "8g", "memory": "64g"})
    kwargs = config["container_create_kwargs"]
    assert kwargs["device_requests"] == [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}]
    assert kwargs["shm_size"] == "8g" and config["mem_limit"] == "64g"


def test_deployments_file_declares_the_deployments():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {
        "finetune",
        "retrain-nightly",
        "retrain-on-data",
        "promote",
        "evaluate-model",
        "on-promotion",
        "export-champion",
        "sweep",
        "sweep-variant",
    }
    for d in deployments.values():
        module, func = d["entrypoint"].split(":")
        assert (ROOT / module).is_file() and f"def {func}(" in (ROOT / module).read_text()
        assert d["work_pool"]["name"] == "gpu"
    assert deployments["finetune"]["work_pool"]["job_variables"]["gpu_count"] == 1
    # The sweep waits and scores on CPU; its variants train on the GPU; its default grid plans.
    assert deployments["sweep-variant"]["work_pool"]["job_variables"]["gpu_count"] == 1
    assert deployments["sweep"]["work_pool"]["job_variables"]["gpu_count"] == 0
    from peftflow.config import demo_config
    from peftflow.sweep.plan import plan_sweep

    assert len(plan_sweep(demo_config(), **deployments["sweep"]["parameters"]).variants) == 3
    assert deployments["retrain-nightly"]["work_pool"]["job_variables"]["gpu_count"] == 0
    assert deployments["retrain-nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    (trigger,) = deployments["retrain-on-data"]["triggers"]
    assert trigger["expect"] == ["peftflow.dataset.updated"]
    assert trigger["parameters"]["dataset"] == "{{ event.payload.dataset }}"
    for name in ("on-promotion", "export-champion"):  # started by the relay's event, for `champion` only
        (trigger,) = deployments[name]["triggers"]
        assert trigger["expect"] == ["peftflow.model.alias-set"]
        assert trigger["match"] == {"prefect.resource.id": "peftflow.model.*", "peftflow.alias": "champion"}
        assert trigger["parameters"]["version"] == "{{ event.payload.version }}"
    from flows.on_promotion import on_promotion

    assert set(deployments["on-promotion"]["triggers"][0]["parameters"]) <= set(on_promotion.parameters.properties)
    assert deployments["on-promotion"]["concurrency_limit"] == 1


def test_local_deployments_run_from_the_checkout_on_a_process_pool(tmp_path):
    from flows.deployfile import local_deployments, write_local_deployments

    spec = local_deployments(pool="local", directory=tmp_path, env={"MLFLOW_TRACKING_URI": "http://x"})
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(tmp_path.resolve())
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"local"}
    env = spec["deployments"][0]["work_pool"]["job_variables"]["env"]
    assert env == {"PYTHONPATH": str(tmp_path.resolve()), "MLFLOW_TRACKING_URI": "http://x"}
    out = write_local_deployments(tmp_path / "p.yaml", pool="local")
    assert yaml.safe_load(out.read_text())["deployments"][2]["triggers"]


def test_compose_stack_structure():
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "worker", "minio"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql+psycopg2://" in mlflow and "--artifacts-destination s3://" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "prefect worker start --pool gpu" in services["worker"]["command"]
    assert services["relay"]["command"].startswith("peftflow relay")
    assert "peftflow webhooks create --url http://relay:8765/mlflow-webhook" == services["webhook"]["command"]
    secret = services["relay"]["environment"]["PEFTFLOW_WEBHOOK_SECRET"]
    assert services["webhook"]["environment"]["PEFTFLOW_WEBHOOK_SECRET"] == secret
    assert services["mlflow"]["environment"]["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert (ROOT / "infra" / "Dockerfile").is_file()


def test_finetune_deployment_form_has_defaults_and_descriptions():
    from flows.finetune import finetune

    schema = finetune.parameters.model_dump()
    assert schema["properties"]["config"]["description"].startswith("The run config")
    fields = schema["definitions"]["RunConfig"]["properties"]
    assert fields["dataset"]["default"] == "demo_orders" and fields["dataset"]["description"]
    promotion = fields["promotion"]["anyOf"][1]["properties"]  # the group's Custom tab
    assert (
        promotion["bootstrap_samples"]["default"] == 0 and "bootstrap" in promotion["bootstrap_samples"]["description"]
    )


def test_crashed_run_automations_are_valid_prefect_automations():
    """deployments/automations.yaml, read by Prefect's own automation model (what
    `prefect automation create --from-file` sends): heartbeats -> Crashed -> Scheduled again."""
    from prefect.events.schemas.automations import AutomationCore

    spec = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())
    silent, rerun = (AutomationCore.model_validate(a) for a in spec["automations"])
    assert silent.trigger.posture == "Proactive" and silent.trigger.within.total_seconds() == 90
    assert silent.actions[0].state.value == "CRASHED"
    assert rerun.trigger.expect == {"prefect.flow-run.Crashed"} and rerun.actions[0].state.value == "SCHEDULED"
