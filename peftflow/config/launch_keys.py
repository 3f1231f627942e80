"""The keys of how a run is carried out rather than what it learns: how its data is prepared (the
Data preparation group), processes and nodes (the Distributed group) and how the base model loads
(the Model group). RunConfig inherits them last,
so they close the form (config/form.py GROUPS)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftflow.config.sections import Strict


class LaunchKeys(Strict):
    # fmt: off
    # data preparation (peftflow/data/prepare.py)
    preprocessing_num_workers: int | None = Field(None, ge=1, title="Data preparation: processes",
                                                  description="Processes that tokenise (datasets.map num_proc); "
                                                              "speed only. Empty: one.")
    preprocessing_batch_size: int = Field(1000, ge=1, title="Data preparation: rows per batch",
                                          description="Rows per datasets.map batch; speed only.")
    tokenized_path: str | None = Field(None, title="Data preparation: saved copy",
                                       description="A folder for the prepared data: saved there when it holds "
                                                   "none, reused when it holds this config's (refused when it holds "
                                                   "other data).")

    # distributed training (the train step runs through torchrun when either is > 1)
    num_processes: int = Field(1, ge=1, title="Distributed: processes per node",
                               description="One per GPU; > 1 runs the train step with torchrun. Global batch = batch "
                                           "size "
                                           "per device x gradient accumulation x processes x nodes.")
    nnodes: int = Field(1, ge=1, title="Distributed: nodes",
                        description="> 1 also needs MASTER_ADDR, MASTER_PORT and PEFTFLOW_NODE_RANK on every node.")
    ddp_timeout: int = Field(1800, gt=0, title="Distributed: timeout (s)",
                             description="How long a process waits for the others at a collective before the run "
                                         "fails.")

    # trust
    trust_remote_code: bool = Field(False, title="Model: trust remote code",
                                    description="Run Python code shipped with the model or tokenizer. Off unless set.")
    allow_pickle_weights: bool = Field(False, title="Model: allow pickle weights",
                                       description="Accept a base model with only pickle (.bin/.pt) weights; they are "
                                                   "loaded "
                                                   "with torch's weights_only loader. peftflow itself writes "
                                                   "safetensors only.")
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = Field(
        None, title="Model: RoPE scaling",
        description="Stretch the rotary position embedding when cutoff_len is longer than the model's "
                    "max_position_embeddings, by LLaMA-Factory's rule: factor = ceil(cutoff_len / "
                    "max_position_embeddings). The run trains, scores and publishes the scaled model. Empty: none.")
    upcast_layernorm: bool = Field(False, title="Model: float32 norms",
                                   description="Hold the normalisation layers' weights in float32 when the base "
                                               "loads in bfloat16 or float16 (a float32 base has them already).")
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "fa3"] = Field(
        "auto", title="Model: attention kernel",
        description="Speed only. auto: transformers' default (sdpa); disabled: eager; fa2 / fa3: FlashAttention "
                    "where it is installed on a CUDA GPU, else sdpa with a warning.")
    enable_liger_kernel: bool = Field(False, title="Model: Liger kernels",
                                      description="Speed only: Liger's fused kernels where liger-kernel is installed "
                                                  "on a CUDA GPU, else a warning.")
    # fmt: on
