"""Write docs/configuration.md's table of every LLaMA-Factory key (its own argument classes, as
listed in tests/fixtures/llamafactory/keys.json) and what peftflow does with it, from
peftflow/config/lf_keys.py and RunConfig's fields. `--check` exits 1 if the doc is stale.

    .venv/bin/python scripts/key_table.py [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftflow.config import RunConfig
from peftflow.config.lf_keys import treatment

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "fixtures" / "llamafactory" / "keys.json"
DOC = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- key table: written by scripts/key_table.py -->", "<!-- end of key table -->"


def table() -> str:
    listed = json.loads(KEYS.read_text())
    rows = [
        f"Every key of {listed['version']}'s argument classes:",
        "",
        "| key | class | peftflow | why / as |",
        "|---|---|---|---|",
    ]
    for section, keys in listed["sections"].items():
        for key in keys:
            kind, why = treatment(key, RunConfig.model_fields)
            rows.append(f"| `{key}` | {section} | {kind} | {why.replace('|', '/')} |")
    return "\n".join(rows)


def main() -> int:
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    fresh = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv:
        if fresh != text:
            print(f"{DOC} is stale: run scripts/key_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
