"""Distillation loss: chunking changes nothing, a k=vocab cache is exact, KL falls when trained."""

from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftflow.losses import KDSettings, TeacherTopK, final_hidden, kd_loss, supervised
from peftflow.stages.distill.cache import pad_batch, teacher_topk
from peftflow.stages.distill.teacher import prune_layers, pruned_layer_indices
from peftflow.stages.distill.trainer import distill_trainer
from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback

torch.manual_seed(0)
V, H = 50, 8


def random_problem(n=37):
    s_hidden = torch.randn(n, H, requires_grad=True)
    s_weight = torch.randn(V, H)
    t_logits = torch.randn(n, V) * 3
    targets = torch.randint(0, V, (n,))
    return s_hidden, s_weight, t_logits, targets


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_chunked_loss_equals_unchunked(direction):
    s_hidden, s_weight, t_logits, targets = random_problem()
    fn = lambda a, b: t_logits[a:b]  # noqa: E731
    whole = kd_loss(s_hidden, s_weight, targets, KDSettings(chunk_size=1000, direction=direction), fn)
    (grad_whole,) = torch.autograd.grad(whole["loss"], s_hidden)
    chunked = kd_loss(s_hidden, s_weight, targets, KDSettings(chunk_size=5, direction=direction), fn)
    (grad_chunked,) = torch.autograd.grad(chunked["loss"], s_hidden)
    assert torch.allclose(whole["loss"], chunked["loss"], atol=1e-5)
    assert torch.allclose(grad_whole, grad_chunked, atol=1e-5)


def test_loss_matches_the_formula():
    s_hidden, s_weight, t_logits, targets = random_problem()
    st = KDSettings(temperature=2.0, kd_ratio=0.3)
    got = kd_loss(s_hidden, s_weight, targets, st, lambda a, b: t_logits[a:b])["loss"]
    s_logits = s_hidden @ s_weight.T
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s_logits / 2, -1), torch.log_softmax(t_logits / 2, -1), log_target=True, reduction="batchmean"
    )
    ce = torch.nn.functional.cross_entropy(s_logits, targets)
    assert torch.allclose(got, 0.3 * 4 * kl + 0.7 * ce, atol=1e-5)


def test_topk_cache_with_k_equal_vocab_is_exact():
    s_hidden, s_weight, t_logits, targets = random_problem()
    live = kd_loss(s_hidden, s_weight, targets, KDSettings(), lambda a, b: t_logits[a:b])["loss"]
    top = t_logits.topk(V, dim=-1)
    cached = kd_loss(s_hidden, s_weight, targets, KDSettings(), teacher_topk=TeacherTopK(top.values, top.indices))[
        "loss"
    ]
    assert torch.allclose(live, cached, atol=1e-5)
    small = t_logits.topk(5, dim=-1)
    approx = kd_loss(s_hidden, s_weight, targets, KDSettings(), teacher_topk=TeacherTopK(small.values, small.indices))
    assert not torch.allclose(live, approx["loss"], atol=1e-3)  # an approximation, as documented
    with pytest.raises(ValueError, match="reverse KL"):
        kd_loss(
            s_hidden,
            s_weight,
            targets,
            KDSettings(direction="reverse"),
            teacher_topk=TeacherTopK(small.values, small.indices),
        )


def test_pruned_layer_indices_are_evenly_spaced():
    assert pruned_layer_indices(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert pruned_layer_indices(2, 1) == [0]
    with pytest.raises(ValueError):
        pruned_layer_indices(2, 3)


def _rows(n=6):
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        ids = torch.randint(10, 500, (12,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 6 + ids[6:]})
    return rows


def test_kl_decreases_on_a_tiny_teacher_student_pair(tiny_model, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    student_dir = prune_layers(tiny_model, 1, tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 1
    # The kept layer is the teacher's layer 0, bit for bit.
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)

    ids, mask, labels = pad_batch(_rows())
    with torch.no_grad():
        t_hidden, _ = supervised(final_hidden(teacher, ids, mask), labels)
    t_head = teacher.get_output_embeddings().weight
    settings = KDSettings(kd_ratio=1.0, chunk_size=16)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    kls = []
    for _ in range(8):
        s_hidden, targets = supervised(final_hidden(student, ids, mask), labels)
        out = kd_loss(
            s_hidden, student.get_output_embeddings().weight, targets, settings, lambda a, b: t_hidden[a:b] @ t_head.T
        )
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        kls.append(float(out["kl"]))
    assert kls[-1] < 0.7 * kls[0]

    cache = teacher_topk(teacher, _rows(), k=teacher.config.vocab_size)
    assert cache.values.shape[0] == t_hidden.shape[0]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"stage": "distill"}, "stage: distill needs a teacher"),
        ({"teacher": "builtin:tiny-random"}, "only apply to stage: distill"),
        (
            {"stage": "distill", "teacher": "x", "student_layers": 2, "model_name_or_path": "y"},
            "student_layers and model_name_or_path",
        ),
        ({"stage": "distill", "teacher": "x", "kd_direction": "reverse", "teacher_topk": 8}, "kd_direction: reverse"),
        ({"stage": "distill", "teacher": "x", "finetuning_type": "prefix"}, "cannot be a distillation student"),
        ({"finetuning_type": "full", "merge": False}, "ships as trained"),
        ({"stage": "distill", "teacher": "x", "num_processes": 2}, "num_processes: 1 and nnodes: 1"),
    ],
)
def test_distill_config_errors(raw, expected):
    from peftflow.config import parse_config
    from peftflow.errors import UserError

    with pytest.raises(UserError, match=expected):
        parse_config(raw)


def test_missing_teacher_and_tokenizer_mismatch_are_clear_errors(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from peftflow.config import RunConfig
    from peftflow.errors import UserError
    from peftflow.stages.distill.teacher import resolve_student, resolve_teacher

    with pytest.raises(UserError, match="directory not found"):
        resolve_teacher(RunConfig(stage="distill", teacher=str(tmp_path / "no-teacher")))
    other = tmp_path / "other"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(other)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens(["<extra-token>"])
    tok.save_pretrained(other)
    cfg = RunConfig(stage="distill", teacher=tiny_model, model_name_or_path=str(other))
    with pytest.raises(UserError, match="tokenizers differ"):
        resolve_student(cfg, resolve_teacher(cfg))


def test_full_student_trains_with_a_live_teacher_and_ships_as_is(tiny_model, tmp_path):
    from peftflow import merge
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset

    cfg = RunConfig(
        stage="distill",
        teacher=tiny_model,
        model_name_or_path=tiny_model,
        finetuning_type="full",
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        kd_chunk_size=8,
    )
    data = prepare_dataset(cfg, tiny_model)
    logged = []
    result = train_run(
        cfg,
        tiny_model,
        data.path,
        tmp_path,
        trainer_factory=partial(distill_trainer, teacher_path=tiny_model),
        callbacks=(MetricsCallback(lambda s, m: logged.append(m)),),
    )
    assert result.trainable_params == result.total_params
    assert all("kd_kl" in m for m in logged if "loss" in m)
    shipped = merge.merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-3)
    assert shipped.max_abs_logit_diff == 0.0
    assert AutoModelForCausalLM.from_pretrained(shipped.merged_dir).config.num_hidden_layers == 2


def test_split_batch_losses_add_up_to_the_whole_batch_loss_with_num_items():
    """Gradient accumulation: each micro-batch's loss over the step's supervised positions, summed,
    is the loss of the whole batch (what the stock loss does with num_items_in_batch)."""
    s_hidden, s_weight, t_logits, targets = random_problem(40)
    whole = kd_loss(s_hidden, s_weight, targets, KDSettings(), lambda a, b: t_logits[a:b])["loss"]
    halves = [
        kd_loss(
            s_hidden[i : i + 20],
            s_weight,
            targets[i : i + 20],
            KDSettings(),
            lambda a, b, i=i: t_logits[i + a : i + b],
            num_items_in_batch=40,
        )["loss"]
        for i in (0, 20)
    ]
    assert torch.allclose(sum(halves), whole, atol=1e-5)


def test_gradient_accumulation_logs_the_same_kd_loss_as_one_big_batch(tiny_model, tmp_path):
    """Batch 4 in one step, or 2 x 2 accumulated: the same first logged loss (it was 2x too large)."""
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset

    def first_loss(batch: int, accumulation: int, out) -> float:
        cfg = RunConfig(
            stage="distill",
            teacher=tiny_model,
            model_name_or_path=tiny_model,
            max_steps=1,
            logging_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=1e-3,
            max_samples=16,
            val_size=4,
            seed=3,
        )
        data = prepare_dataset(cfg, tiny_model)
        logged = []
        train_run(
            cfg,
            tiny_model,
            data.path,
            out,
            trainer_factory=partial(distill_trainer, teacher_path=tiny_model),
            callbacks=(MetricsCallback(lambda s, m: logged.append(m)),),
        )
        return next(m["loss"] for m in logged if "loss" in m)

    one = first_loss(4, 1, tmp_path / "one")
    accumulated = first_loss(2, 2, tmp_path / "accumulated")
    assert accumulated == pytest.approx(one, rel=0.02)
