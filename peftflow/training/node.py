"""The other nodes of a multi-node run (`nnodes > 1`, `PEFTFLOW_NODE_RANK` >= 1):

    python -m peftflow.training.node CONFIG.yaml

Node 0 runs the whole flow (`peftflow run CONFIG.yaml` or a flow run); every other node only joins
its train step. It derives the model, the prepared data and the training key from the same
config as the flow does (with a run store: fetched as node 0 sealed them, not rebuilt), so its
torchrun processes train the same examples, and returns when node 0's processes finish.
infra/k8s-multinode-job.yaml runs it on pods 1..M-1 of an indexed Job.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from peftflow.config import RunConfig, load_config
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.lineage import train_key
from peftflow.run_dir import RunDir
from peftflow.stages import get_workflow
from peftflow.training import distributed


def join(cfg: RunConfig) -> Path:
    """Train on this node as one of `cfg.nnodes`; the run dir it trained in."""
    if cfg.nnodes < 2 or distributed.node_rank(cfg) < 1:
        raise UserError(
            f"peftflow.training.node runs nodes 1..{cfg.nnodes - 1} of a multi-node run "
            "(nnodes > 1, PEFTFLOW_NODE_RANK >= 1); node 0 runs the flow"
        )
    models = get_workflow(cfg).resolve(cfg)
    data = prepare_dataset(cfg, models.model.path)
    work = RunDir.of(cfg, train_key(cfg, models.model.fingerprint, data.fingerprint, models.extras_fingerprint)).path
    distributed.run(cfg, models.model.path, data.path, work)
    return work


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg, _ = load_config(argv[0] if argv else None)
        join(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
