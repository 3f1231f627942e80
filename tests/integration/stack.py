"""A real team stack on loopback for integration tests: PostgreSQL databases (the server on
127.0.0.1:5432), moto's S3 server, an MLflow server (PostgreSQL + S3 artifacts) and a Prefect
server (PostgreSQL) with a process worker. Every process is started here and stopped here."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = dict(
    host=os.environ.get("PEFTFLOW_TEST_PGHOST", "127.0.0.1"),
    port=int(os.environ.get("PEFTFLOW_TEST_PGPORT", "5432")),
    user=os.environ.get("PEFTFLOW_TEST_PGUSER", "postgres"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def _pg(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


@contextmanager
def database(prefix: str):
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _pg(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path, cwd: Path = ROOT):
        self.name, self.log = name, logdir / f"{name}.log"
        self.p = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, 2)  # SIGINT: servers and workers shut down cleanly and fast
            try:
                self.p.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, 9)
                self.p.wait(10)


def wait_http(url: str, proc: Proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.p.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{proc.name} not up at {url} after {timeout}s:\n{proc.tail()}")


class Stack:
    """Holds the processes; `env` is what a client of the stack (CLI, worker) needs."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.env = tmp, [], {}

    def start(self, name, args, env, url=None, timeout=180) -> Proc:
        proc = Proc(name, args, env, self.tmp)
        self.procs.append(proc)
        if url:
            wait_http(url, proc, timeout)
        return proc

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        r = subprocess.run(list(args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def prefect(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "prefect"), "--no-prompt", *args, **kw)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(3000)}" for p in self.procs)


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        TOKENIZERS_PARALLELISM="false",
        COLUMNS="200",
    )
    return env


@contextmanager
def team_stack(
    tmp: Path, peftflow_home: Path, bucket: str = "peftflow-artifacts", mlflow_env: dict[str, str] | None = None
):
    """moto S3 + MLflow server + Prefect server (PostgreSQL) + a `local` process worker, and the
    deployments of deployments/prefect.yaml on that pool. Yields the Stack. `mlflow_env`: extra
    environment of the MLflow server (e.g. its webhook settings)."""
    stack = Stack(tmp)
    env = base_env(tmp)
    with database("peftflow_prefect") as prefect_db, database("peftflow_mlflow") as mlflow_db:
        try:
            s3_port, mlflow_port, prefect_port = free_port(), free_port(), free_port()
            s3 = f"http://127.0.0.1:{s3_port}"
            stack.start(
                "moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env, url=f"{s3}/moto-api/"
            )
            import boto3

            boto3.client(
                "s3",
                endpoint_url=s3,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            ).create_bucket(Bucket=bucket)
            pg = f"{PG['user']}@{PG['host']}:{PG['port']}"
            mlflow_env = {**env, "MLFLOW_S3_ENDPOINT_URL": s3, **(mlflow_env or {})}
            # Both servers migrate their databases at start-up: start them together, then wait.
            mlflow = stack.start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"postgresql+psycopg2://{pg}/{mlflow_db}",
                    "--artifacts-destination",
                    f"s3://{bucket}/mlflow",
                ],
                mlflow_env,
            )
            prefect_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{pg}/{prefect_db}"}
            server = stack.start(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                prefect_env,
            )
            wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow)
            wait_http(f"http://127.0.0.1:{prefect_port}/api/health", server)
            api = f"http://127.0.0.1:{prefect_port}/api"
            stack.env = {
                **env,
                "PREFECT_API_URL": api,
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "PEFTFLOW_HOME": str(peftflow_home),
                "S3_ENDPOINT": s3,
                "MLFLOW_DB": mlflow_db,
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / "prefect-results"),
            }
            stack.prefect("work-pool", "create", "local", "--type", "process")
            stack.prefect("global-concurrency-limit", "create", "gpu", "--limit", "1")
            yield stack
        finally:
            stack.stop()


def deploy(stack: Stack, spec: dict, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    stack.prefect("deploy", "--all", "--prefect-file", str(path), timeout=300)


def start_worker(stack: Stack, pool: str = "local", limit: int | None = None) -> Proc:
    """A process worker on `pool`; `limit`: at most that many flow runs at once (default: no limit)."""
    env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    proc = stack.start(f"worker-{pool}", args + (["--limit", str(limit)] if limit else []), env)
    return proc


def run_deployment(stack: Stack, name: str, params: dict) -> str:
    r = stack.prefect("deployment", "run", name, "--params", json.dumps(params))
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", r.stdout)
    assert m, r.stdout
    return m[1]


def api(stack: Stack, method: str, path: str, **kw):
    r = httpx.request(method, stack.env["PREFECT_API_URL"] + path, timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def create_flow_run(stack: Stack, deployment: str, params: dict) -> str:
    """A flow run of `deployment` (flow/name) as the dashboard's run form creates it: one API call
    with the parameters as JSON. Returns its id."""
    flow_name, dep_name = deployment.split("/")
    dep = api(stack, "GET", f"/deployments/name/{flow_name}/{dep_name}")
    return api(stack, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params})["id"]


def wait_flow_run(stack: Stack, flow_run_id: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api(stack, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} still {run['state']['name']} after {timeout}s\n{stack.logs()}")


def flow_runs_of(stack: Stack, deployment: str) -> list[dict]:
    flow_name, dep_name = deployment.split("/")
    dep = api(stack, "GET", f"/deployments/name/{flow_name}/{dep_name}")
    return api(
        stack,
        "POST",
        "/flow_runs/filter",
        json={"deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_DESC"},
    )
