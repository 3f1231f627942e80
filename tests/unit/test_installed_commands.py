"""Every `peftflow` command the README, docs/ and infra/compose.yaml show runs as a user runs it: the
installed console script, from a folder outside the checkout (so nothing imports from the checkout
by accident), with `--help` at least; `peftflow relay` started for real and answering HTTP."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PEFTFLOW = Path(sys.executable).parent / "peftflow"  # the console script pip installed next to this python
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A command in a doc: a shell line (or one after `&&`, `;`, `$`) of a fenced block, or an inline code span
# that starts with `peftflow` (options before the verb allowed). A span is prose otherwise: an error message
# quoted in a table can say "...; peftflow passes it no ...".
VERB = r"peftflow((?:[ \t]+--?[a-z-]+)*)[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?"
COMMAND = re.compile(r"(?:^|&&|;|\$)[ \t]*" + VERB, re.M)
SPAN_COMMAND = re.compile(r"^[ \t]*" + VERB)
GROUPS = ("webhooks",)  # verbs with subcommands


def _verb(match: re.Match) -> str:
    return f"{match.group(2)} {match.group(3)}" if match.group(2) in GROUPS and match.group(3) else match.group(2)


def documented_verbs() -> dict[str, str]:
    """verb -> the first doc that shows it, from fenced code blocks and inline code spans."""
    found: dict[str, str] = {}
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        matches = [*COMMAND.finditer("\n".join(blocks)), *filter(None, map(SPAN_COMMAND.match, spans))]
        for match in matches:
            found.setdefault(_verb(match), doc.name)
    return found


def compose_commands() -> dict[str, list[str]]:
    """service -> its command's words, for the services of infra/compose.yaml that run `peftflow`."""
    services = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())["services"]
    out = {}
    for name, service in services.items():
        command = service.get("command")
        words = shlex.split(command) if isinstance(command, str) else list(command or [])
        if words and words[0] == "peftflow":
            out[name] = words
    return out


@pytest.fixture
def user_env(tmp_path):
    """A user's shell: no PYTHONPATH into the checkout, no Prefect or MLflow settings of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PEFTFLOW_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PEFTFLOW_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        COLUMNS="200",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
    )
    return env


def _help_of_each(commands: list[list[str]], env: dict, cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """`peftflow WORDS --help` for each, at once (each is a fresh process, mostly waiting on imports)."""
    procs = {
        " ".join(words): subprocess.Popen(
            [str(PEFTFLOW), *words, "--help"],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for words in commands
    }
    return {
        name: subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for name, p in procs.items()
    }


def test_the_docs_show_commands_and_the_compose_file_runs_them():
    verbs = documented_verbs()
    assert {"run", "validate", "sweep", "export", "generate", "relay", "webhooks create"} <= set(verbs), verbs
    assert set(compose_commands()) == {"relay", "webhook"}  # infra/compose.yaml's peftflow services


def test_every_documented_and_compose_command_answers_help_from_the_installed_script(user_env, tmp_path):
    assert PEFTFLOW.is_file(), f"no console script at {PEFTFLOW}: install the package (make install)"
    verbs = documented_verbs()
    compose = compose_commands()
    # the compose command's verb words, up to its first option: `peftflow webhooks create --url ...`
    compose_verbs = {name: [w for w in words[1:3] if not w.startswith("-")] for name, words in compose.items()}
    results = _help_of_each([v.split() for v in verbs] + list(compose_verbs.values()) + [[]], user_env, tmp_path)
    failed = {
        name: (r.returncode, (r.stderr or r.stdout)[-400:])
        for name, r in results.items()
        if r.returncode != 0 or "Usage" not in r.stdout
    }
    assert not failed, failed
    shown = {f"{a} {b}" if a in GROUPS else a for a, b in re.findall(r"│ ([a-z][a-z-]*)\s+(\S+)?", results[""].stdout)}
    assert set(v.split()[0] for v in verbs) <= {s.split()[0] for s in shown}, (sorted(verbs), results[""].stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_relay_starts_from_the_installed_script_and_answers(user_env, tmp_path):
    """infra/compose.yaml's relay command, bound to loopback: /health answers, an unsigned delivery
    is refused (401) before anything is sent to Prefect (no Prefect server is needed for either)."""
    words = compose_commands()["relay"]
    port = _free_port()
    command = [str(PEFTFLOW), *words[1:]]
    command[command.index("--host") + 1], command[command.index("--port") + 1] = "127.0.0.1", str(port)
    env = {**user_env, "PEFTFLOW_WEBHOOK_SECRET": "s3cret", "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}
    relay = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, health = time.monotonic() + 90, None
        while health is None:
            assert relay.poll() is None, f"the relay exited {relay.returncode}: {relay.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "the relay did not answer in 90 s"
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert health == b'{"ok":true}'
        unsigned = urllib.request.Request(f"http://127.0.0.1:{port}/mlflow-webhook", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unsigned, timeout=10)
        assert refused.value.code == 401
    finally:
        relay.terminate()
        relay.wait(timeout=30)
