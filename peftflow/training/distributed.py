"""Multi-process (and multi-node) training: the train step through torchrun.

`run()` writes the job to `<output_dir>/launch.json`, starts
`python -m torch.distributed.run --nproc_per_node N ... -m peftflow.training.distributed launch.json`, and
reads back the `train_result.json` that rank 0 writes. Every process runs `train.run`; the HF
Trainer sees torchrun's environment and trains with DistributedDataParallel (NCCL on GPUs, gloo
on CPUs). Per-step metrics come back as the result's loss history, not live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import TrainerCallback

from peftflow.config import RunConfig
from peftflow.run_dir import RunDir
from peftflow.store import open_store, run_key
from peftflow.training import run as local
from peftflow.training.resume import resumes
from peftflow.training.run import TrainResult
from peftflow.training.stored import fetch_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def is_distributed(cfg: RunConfig) -> bool:
    return cfg.num_processes > 1 or cfg.nnodes > 1


def launch_command(cfg: RunConfig, job_file: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={cfg.num_processes}",
        f"--nnodes={cfg.nnodes}",
    ]
    if cfg.nnodes > 1:
        cmd += [
            f"--node_rank={node_rank(cfg)}",
            f"--master_addr={os.environ['MASTER_ADDR']}",
            f"--master_port={os.environ.get('MASTER_PORT', '29500')}",
            # Each node prepares its data (or fetches the store's copy) before its torchrun starts, so a
            # node that is first waits for the others at the rendezvous: as long as at a collective,
            # not torchrun's 600 s, or a big dataset tokenising on another node fails the run.
            f"--rdzv-conf=timeout={cfg.ddp_timeout}",
        ]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "peftflow.training.distributed", str(job_file)]


def train(
    cfg: RunConfig,
    model_path: str,
    data_path: str,
    output_dir: str | Path,
    callbacks: tuple[TrainerCallback, ...] = (),
    trainer_factory=None,
) -> TrainResult:
    """The train step: in this process, or through torchrun when the config asks for several
    processes or nodes (per-step callbacks then see nothing; the result carries the loss history).
    A stage with its own trainer (`trainer_factory`) trains in one process: its config check says so."""
    if is_distributed(cfg):
        if trainer_factory is not None:
            raise ValueError(f"stage {cfg.stage} trains in one process; torchrun runs the stock trainer only")
        return run(cfg, model_path, data_path, output_dir)
    return local.run(cfg, model_path, data_path, output_dir, callbacks=callbacks, trainer_factory=trainer_factory)


def node_rank(cfg: RunConfig) -> int:
    """This machine's node in a multi-node run (`PEFTFLOW_NODE_RANK`); 0 on a single node."""
    return int(os.environ.get("PEFTFLOW_NODE_RANK", "0")) if cfg.nnodes > 1 else 0


def run(cfg: RunConfig, model_path: str, data_path: str, output_dir: str | Path) -> TrainResult | None:
    """torchrun on this node. Node 0 holds global rank 0, which writes the adapter and the result:
    it returns the TrainResult; another node returns None once its processes are done."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if (store := open_store(cfg.storage)) is not None and resumes(cfg):  # once per node, before its ranks start
        fetch_checkpoint(store, run_key(cfg.registry.name, output_dir), RunDir(output_dir).checkpoints)
    job = output_dir / "launch.json"
    job.write_text(
        json.dumps(
            {
                "config": cfg.model_dump(mode="json"),
                "model_path": model_path,
                "data_path": data_path,
                "output_dir": str(output_dir),
            }
        )
    )
    result_file = RunDir(output_dir).train_result
    result_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    proc = subprocess.run(launch_command(cfg, job), env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"torchrun exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    if node_rank(cfg):
        return None
    raw = json.loads(result_file.read_text())
    raw["loss_history"] = tuple(tuple(h) for h in raw["loss_history"])
    raw["eval_history"] = tuple(tuple(h) for h in raw.get("eval_history", ()))
    return TrainResult(**raw)


def _main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    local.run(RunConfig.model_validate(job["config"]), job["model_path"], job["data_path"], job["output_dir"])


if __name__ == "__main__":
    _main(sys.argv[1])
