"""`stage: sft`: supervised fine-tuning on conversations; its workflow is the shared default."""

from peftflow.stages.base import Stage

STAGE = Stage("sft", "supervised fine-tuning", packs_rows=True, lm_loss=True, streams=True)
