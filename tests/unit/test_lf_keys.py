"""Every key of LLaMA-Factory's argument classes is honoured, refused with its reason, or named as
unable to change the run; docs/configuration.md's table says which, and is current."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.config import RunConfig, parse_config
from peftflow.config.lf_keys import NO_EFFECT, REFUSED, SPEED_ONLY, treatment
from peftflow.errors import UserError
from peftflow.redact import is_secret_key

ROOT = Path(__file__).resolve().parents[2]
LISTED = json.loads((ROOT / "tests" / "fixtures" / "llamafactory" / "keys.json").read_text())
ALL_KEYS = [k for keys in LISTED["sections"].values() for k in keys]


def test_every_llamafactory_key_has_a_treatment():
    unknown = [k for k in ALL_KEYS if treatment(k, RunConfig.model_fields)[0].startswith("refused (unknown")]
    assert unknown == []
    # a key named like a credential is refused before any table reads it (test_safety)
    accepted = [*SPEED_ONLY, *NO_EFFECT, *REFUSED]
    assert [k for k in accepted if is_secret_key(k)] == []


# eval_dataset is also a v1 key: a file with it reads as v1, whose reader refuses it (test_config_v1)
@pytest.mark.parametrize("key", sorted(k for k in ALL_KEYS if k in REFUSED and k != "eval_dataset"))
def test_a_refused_key_is_one_line_and_its_default_loads(key):
    allowed, reason = REFUSED[key]
    with pytest.raises(UserError) as e:
        parse_config({key: "something else"}, source="run.yaml")
    assert str(e.value) == f"run.yaml: key '{key}': 'something else': {reason}"
    for value in allowed:
        parse_config({key: value}, source="run.yaml")


def test_the_docs_key_table_is_current():
    proc = subprocess.run([sys.executable, "scripts/key_table.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
