"""The config keys of `stage: dpo`, LLaMA-Factory's names and defaults (its RLHFArguments)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DpoKeys(BaseModel):
    # fmt: off
    pref_beta: float = Field(0.1, gt=0.0, title="Preference: beta",
                             description="How far the policy may move from the reference: the scale of the implicit "
                                         "reward beta * log(policy / reference).")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = Field(
        "sigmoid", title="Preference: loss",
        description="sigmoid (DPO), hinge, ipo (on per-token log-probs), orpo and simpo (no reference model).")
    pref_ftx: float = Field(0.0, ge=0.0, title="Preference: SFT weight",
                            description="Weight of the chosen answers' per-token cross-entropy added to the loss.")
    simpo_gamma: float = Field(0.5, ge=0.0, title="Preference: SimPO margin",
                               description="pref_loss simpo: the target reward margin gamma.")
    dpo_label_smoothing: float = Field(0.0, ge=0.0, le=0.5, title="Preference: label smoothing",
                                       description="pref_loss sigmoid: the share of pairs assumed flipped (cDPO).")
    ref_model: str | None = Field(None, title="Preference: reference model",
                                  description="The reference model. Empty: the model trained, as loaded (LoRA: the "
                                              "adapter switched off).")
    # fmt: on
