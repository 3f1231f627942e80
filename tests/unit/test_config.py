"""RunConfig: LLaMA-Factory YAML loads unchanged; mistakes name the key."""

import pytest
import yaml

from peftflow.config import RunConfig, load_config, read_yaml
from peftflow.config.lf_keys import unheard_note
from peftflow.errors import UserError
from peftflow.training.arguments import training_arguments

# A LLaMA-Factory examples/train_lora/*_lora_sft.yaml, key for key.
LLAMA_FACTORY_YAML = """
### model
model_name_or_path: builtin:tiny-random
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: default
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_llama_factory_yaml_loads_unchanged(tmp_path):
    cfg, unused = load_config(write(tmp_path, LLAMA_FACTORY_YAML))
    assert cfg.dataset_names == ["identity", "alpaca_en_demo"]
    assert cfg.lora_rank == 8 and cfg.effective_lora_alpha == 16  # LLaMA-Factory default: 2 x rank
    assert cfg.learning_rate == 1e-4 and cfg.gradient_accumulation_steps == 8 and cfg.bf16
    assert cfg.trust_remote_code is True
    assert cfg.ddp_timeout == 180000000
    # Known to LLaMA-Factory, and unable to change the run: reported with why, never silently dropped.
    assert {"do_train", "overwrite_cache", "plot_loss", "report_to"} <= set(unused)
    note = unheard_note(unused)
    assert "plot_loss (no effect: the loss curves are in MLflow" in note
    assert cfg.preprocessing_num_workers == 16  # honoured: datasets.map's processes
    # Checkpoint keys peftflow reads: null / false as LLaMA-Factory writes them keep the automatic resume.
    assert cfg.resume_from_checkpoint is None and cfg.save_only_model is False
    assert not {"resume_from_checkpoint", "save_only_model"} & set(unused)


def test_warmup_ratio_maps_to_transformers5_warmup_steps(tmp_path):
    cfg, _ = load_config(write(tmp_path, LLAMA_FACTORY_YAML))
    args = training_arguments(cfg, tmp_path)  # bf16: true, also on a CPU-only machine
    assert args.warmup_steps == pytest.approx(0.1)


def test_peftflow_sections_in_the_same_file(tmp_path):
    text = (
        "dataset: demo_orders\nregistry:\n  name: my-model\npromotion:\n  min_improvement: 0.05\n"
        "evaluation:\n  metric: json_fields\n"
    )
    cfg, unused = load_config(write(tmp_path, text))
    assert (cfg.registry.name, cfg.promotion.min_improvement, cfg.evaluation.metric) == (
        "my-model",
        0.05,
        "json_fields",
    )
    assert unused == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lora_rnak: 8\n", "unknown key 'lora_rnak' (did you mean 'lora_rank'?)"),
        ("registry:\n  nmae: x\n", "unknown key 'registry.nmae' (did you mean 'name'?)"),
        ("learning_rate: 0\n", "key 'learning_rate'"),
        ("lora_rank: -4\n", "key 'lora_rank'"),
        ("per_device_train_batch_size: 0\n", "key 'per_device_train_batch_size'"),
        ("finetuning_type: banana\n", "key 'finetuning_type'"),
        ("bf16: true\nfp16: true\n", "bf16 and fp16"),
        ("warmup_ratio: 0.1\nwarmup_steps: 10\n", "warmup_ratio and warmup_steps"),
        ("lora_rank: [8\n", "invalid YAML"),
        ("storage: my-bucket/peftflow\n", "key 'storage': 'my-bucket/peftflow' is not a storage URL"),
        ("storage: s4://bucket/peftflow\n", "key 'storage': unknown storage protocol 's4'"),
        ("- a\n- b\n", "expected a mapping"),
        ("stage: dpo\nref_model_adapters: saves/ref\n", "key 'ref_model_adapters': 'saves/ref': not supported: give"),
        ("stage: dpo\nld_alpha: 0.5\n", "key 'ld_alpha': 0.5: not supported"),
        ("dataset: a,b\ninterleave_probs: 0.5,0.5\n", "interleave_probs is read only with mix_strategy interleave"),
        ("streaming: true\n", "streaming: needs max_steps > 0: a stream has no length to count epochs by"),
        ("streaming: true\nmax_steps: 9\nval_size: 0.2\n", "streaming: val_size 0.2: a stream's size is unknown"),
        ("buffer_size: 100\n", "buffer_size is the streaming shuffle buffer; it is read only with streaming: true"),
        ("push_to_hub: true\n", "key 'push_to_hub': True: peftflow publishes to the MLflow registry"),
        ("shift_attn: true\n", "key 'shift_attn': True: not supported: LongLoRA"),
        ("disable_shuffling: true\n", "key 'disable_shuffling': True: not supported: peftflow shuffles"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_config(path)
    message = str(e.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_llamafactory_keys_read_under_peftflows_names(tmp_path):
    text = "disable_gradient_checkpointing: true\nmax_new_tokens: 77\ninfer_backend: huggingface\n"
    cfg, unused = load_config(write(tmp_path, text))
    assert (cfg.gradient_checkpointing, cfg.evaluation.max_new_tokens, unused) == (False, 77, [])
    # peftflow's own key, written beside, wins
    cfg, _ = load_config(write(tmp_path, "max_new_tokens: 77\nevaluation:\n  max_new_tokens: 12\n"))
    assert cfg.evaluation.max_new_tokens == 12
    with pytest.raises(UserError, match="key 'infer_backend': vllm: peftflow generates with transformers"):
        load_config(write(tmp_path, "infer_backend: vllm\n"))


def test_a_refused_llamafactory_key_written_as_null_is_not_set(tmp_path):
    text = "stage: dpo\nref_model_adapters: null\nref_model_quantization_bit: null\nmix_strategy: concat\n"
    cfg, _ = load_config(write(tmp_path, text))
    assert cfg.stage == "dpo"


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_are_the_demo():
    cfg, _ = load_config(None)
    assert cfg.model_name_or_path == "builtin:smollm2-135m-instruct"
    assert (cfg.dataset, cfg.dataset_dir) == ("demo_orders", "builtin")


def test_fingerprint_tracks_every_field():
    a = RunConfig()
    assert a.fingerprint() == RunConfig().fingerprint()
    assert a.fingerprint() != RunConfig(learning_rate=1e-3).fingerprint()


def test_config_round_trips_through_json_for_prefect_parameters():
    cfg = RunConfig(lora_target=["q_proj", "v_proj"], registry={"name": "x"})
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert "lora_rank" in RunConfig.model_json_schema()["properties"]["lora"]["anyOf"][1]["properties"]
    yaml.safe_dump(cfg.model_dump(mode="json"))  # serialisable for prefect.yaml defaults


def test_configs_demo_yaml_is_the_builtin_demo():
    from pathlib import Path

    from peftflow.config import demo_config

    cfg, unused = load_config(Path(__file__).parents[2] / "configs" / "demo.yaml")
    assert cfg == demo_config() and unused == []


def test_example_distill_config_loads():
    from pathlib import Path

    cfg, unused = load_config(Path(__file__).parents[2] / "configs" / "distill-smollm2-half.yaml")
    assert (cfg.stage, cfg.student_layers, cfg.teacher_topk) == ("distill", 15, 64) and unused == []


def test_run_store_from_the_environment_and_unset(monkeypatch, tmp_path):
    """`storage` wins over PEFTFLOW_STORAGE; a bad variable is one line naming it; unset: no store."""
    from peftflow.store import open_store

    monkeypatch.delenv("PEFTFLOW_STORAGE", raising=False)
    assert open_store(None) is None and RunConfig().storage is None
    monkeypatch.setenv("PEFTFLOW_STORAGE", "s4://bucket/x")
    with pytest.raises(UserError, match="^PEFTFLOW_STORAGE: unknown storage protocol 's4'"):
        open_store(None)
    assert open_store(tmp_path.as_uri()).url == tmp_path.as_uri()


def test_a_key_given_twice_warns_in_one_line_naming_both_lines_and_keeps_the_last(tmp_path, caplog):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model_name_or_path: builtin:tiny-random\nlora_rank: 8\ndataset: demo_orders\nlora_rank: 16\n"
        "registry:\n  name: first\n  name: second\ndefaults: &d {cutoff_len: 64}\n"
    )
    with caplog.at_level("WARNING", logger="peftflow.config"):
        raw = read_yaml(path)
    assert raw["lora_rank"] == 16 and raw["registry"]["name"] == "second"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: key 'lora_rank' is given twice (lines 2 and 4); the value on line 4 is used, as LLaMA-Factory does",
        f"{path}: key 'name' is given twice (lines 6 and 7); the value on line 7 is used, as LLaMA-Factory does",
    ]
    caplog.clear()
    path.write_text(
        "base: &b {lora_rank: 8, cutoff_len: 64}\nrun:\n  <<: *b\n  lora_rank: 16\n"
    )  # a merge key's override
    with caplog.at_level("WARNING", logger="peftflow.config"):
        assert read_yaml(path)["run"] == {"lora_rank": 16, "cutoff_len": 64}
    assert not caplog.records
