"""Screenshots of what a person sees: the Prefect dashboard (the finetune deployment's Custom run
form, the latest finetune flow run with its logs) and the MLflow UI (registered models, the latest
model and version, the experiment's runs). Drives a real browser; not part of `make test`.

Needs Playwright (not a peftflow dependency; a side venv is enough: `python -m venv /tmp/pw &&
/tmp/pw/bin/pip install playwright`) and a Chromium, e.g. Debian's `/usr/bin/chromium`
(`apt-get install chromium`), and running servers with the `finetune` deployment:

    /tmp/pw/bin/python scripts/ui_screenshots.py --prefect http://127.0.0.1:4200 \
        --mlflow http://127.0.0.1:5000 --out /tmp/screens

Only the standard library besides Playwright, so it runs from any Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MAX_HEIGHT = 16000


def api(base: str, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{base.rstrip('/')}/api{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or "null")


def prefect_pages(base: str, deployment: str) -> dict[str, str]:
    """name -> dashboard URL: the deployment, its Custom run form, its latest flow run."""
    flow_name, dep_name = deployment.split("/")
    dep = api(base, "GET", f"/deployments/name/{flow_name}/{dep_name}")
    pages = {
        "prefect-deployment": f"{base}/deployments/deployment/{dep['id']}",
        "prefect-custom-run-form": f"{base}/deployments/deployment/{dep['id']}/run",
    }
    # The latest run of the flow, from the deployment or from `peftflow run` against this server.
    runs = api(
        base,
        "POST",
        "/flow_runs/filter",
        {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1},
    )
    if runs:
        pages["prefect-flow-run"] = f"{base}/runs/flow-run/{runs[0]['id']}"
    return pages


def mlflow_pages(base: str) -> dict[str, str]:
    """The registered models, the latest one's page and its newest version, the experiments, the
    `peftflow` experiment's runs (those that exist)."""
    pages = {"mlflow-models": f"{base}/#/models"}
    models = _mlflow(base, "registered-models/search?max_results=1&order_by=last_updated_timestamp%20DESC")
    for model in models.get("registered_models", []):
        name = urllib.parse.quote(model["name"])
        pages["mlflow-model"] = f"{base}/#/models/{name}"
        versions = model.get("latest_versions") or []
        if versions:
            newest = max(versions, key=lambda v: int(v["version"]))
            pages["mlflow-model-version"] = f"{base}/#/models/{name}/versions/{newest['version']}"
    pages["mlflow-experiments"] = f"{base}/#/experiments"
    exp = _mlflow(base, "experiments/get-by-name?experiment_name=peftflow").get("experiment")
    if exp:
        pages["mlflow-experiment-runs"] = f"{base}/#/experiments/{exp['experiment_id']}"
    return pages


def _mlflow(base: str, path: str) -> dict:
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/api/2.0/mlflow/{path}", timeout=30) as r:
            return json.loads(r.read() or "{}")
    except urllib.error.HTTPError:  # e.g. no such experiment yet
        return {}


def tidy_mlflow(page) -> None:
    """MLflow 3.17 opens its Assistant panel over a third of the page on a first visit, and its
    sidebar starts in the GenAI workspace: close the one, choose Model training in the other (the
    UI keeps both choices for the rest of the session)."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
    training = page.get_by_role("button", name="Model training", exact=True)
    if training.count():
        training.first.click()
    page.wait_for_timeout(1000)


def shoot(pages: dict[str, str], out: Path, chromium: str, width: int, settle_ms: int) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 1000})
        for name, url in pages.items():
            page.goto(url, wait_until="load")  # the MLflow UI polls: it never goes network-idle
            page.wait_for_timeout(settle_ms)  # the dashboards render after their API calls return
            page.keyboard.press("Escape")  # close a "what is new" dialog (MLflow shows one on first visit)
            if name.startswith("mlflow-"):
                tidy_mlflow(page)
            # Both UIs scroll an inner pane, so a full-page shot is one screen: grow the window to the
            # tallest pane instead (capped), which is also how tall the page reads.
            tall = page.evaluate("Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
            page.set_viewport_size({"width": width, "height": min(max(tall, 1000), MAX_HEIGHT)})
            page.wait_for_timeout(500)
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
            print(f"{path}  {url}  {tall} px tall")
            page.set_viewport_size({"width": width, "height": 1000})
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefect", default="http://127.0.0.1:4200", help="Prefect UI base URL (its API at /api)")
    ap.add_argument("--mlflow", default="http://127.0.0.1:5000", help="MLflow UI base URL; '' to skip")
    ap.add_argument("--deployment", default="finetune/finetune", help="flow/deployment whose form to capture")
    ap.add_argument("--out", default="ui-screenshots", help="folder for the PNG files")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--settle-ms", type=int, default=3000)
    args = ap.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: --chromium {args.chromium}: no such file (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: playwright is not installed in this Python (pip install playwright)", file=sys.stderr)
        return 2
    try:
        pages = prefect_pages(args.prefect, args.deployment)
        # Prefect 3.9 serves two dashboards: the new one (/v2/...) is where its root sends a person,
        # the classic one keeps the plain paths; the forms render differently, so both. (Not the new
        # one's run page: its graph grows with the window, so a tall shot is all graph.)
        base = args.prefect.rstrip("/")
        pages |= {
            name.replace("prefect-", "prefect-v2-"): url.replace(base, f"{base}/v2", 1)
            for name, url in pages.items()
            if name != "prefect-flow-run"
        }
    except OSError as e:
        print(f"error: --prefect {args.prefect}: {e}", file=sys.stderr)
        return 2
    pages |= mlflow_pages(args.mlflow) if args.mlflow else {}
    shoot(pages, Path(args.out), args.chromium, args.width, args.settle_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
