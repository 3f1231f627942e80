"""Distillation (`stage: distill`): the teacher and student models (`teacher`), the teacher's top-k
cache (`cache`) and the trainer that learns from them (`trainer`). The KD loss is in peftflow.losses."""
