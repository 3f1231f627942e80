"""Full fine-tuning: every weight trains and the trained checkpoint is the shipped model."""


def build(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model, adapter_dir, init_dir=None) -> None:
    model.save_pretrained(adapter_dir, safe_serialization=True)
