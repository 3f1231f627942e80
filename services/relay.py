"""`peftflow relay`: receives MLflow registry webhooks and emits Prefect events.

    POST /mlflow-webhook   one MLflow delivery (the URL given to `peftflow webhooks create`)
    GET  /health           200 while the process serves

A delivery is verified first (`peftflow.webhook_signature`): unsigned, wrongly signed or stale
-> 401; signed but malformed, or a replay of a delivery already relayed -> 400. Nothing is
emitted for any of them. A `model_version_alias.created` delivery becomes one
`peftflow.model.alias-set` event, posted to the Prefect server's events API and answered 200 once
the server has accepted it; other registry events and models outside `models` are answered 200
and dropped. If the Prefect server does not accept the event the answer is 503, and MLflow's retry
(same delivery id) is relayed then.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flows.events import alias_set_event
from peftflow import webhook_signature as ws

MAX_BODY = 64 * 1024  # MLflow's registry payloads are a few hundred bytes
ACTOR = "mlflow"  # MLflow's payload does not say who moved the alias
log = logging.getLogger("peftflow.relay")


def create_app(secret: str, models: frozenset[str] = frozenset(), tolerance_s: int = ws.TOLERANCE_S) -> Starlette:
    """The relay's ASGI app. `models`: registered models to relay (empty: all)."""
    if not secret:
        from peftflow.errors import UserError

        raise UserError("the relay needs the webhook secret (PEFTFLOW_WEBHOOK_SECRET)")
    deliveries = ws.DeliveryLog(keep_s=2 * tolerance_s)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        from prefect.client.orchestration import get_client

        async with get_client() as client:  # one HTTP client for every delivery
            app.state.prefect = client
            yield

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await _read(request)
            delivery_id = ws.verify(secret, dict(request.headers), body, tolerance_s=tolerance_s)
            move = ws.parse(body, delivery_id)
        except ws.Rejected as e:
            log.warning("refused a delivery (%s): %s", e.status, e.reason)
            return JSONResponse({"error": e.reason}, status_code=e.status)
        if move is None or (models and move.name not in models):
            log.info("delivery %s: not an alias move of a relayed model; dropped", delivery_id)
            return JSONResponse({"relayed": False, "delivery_id": delivery_id})
        if not deliveries.claim(delivery_id):
            log.warning("refused a replay of delivery %s", delivery_id)
            return JSONResponse({"error": f"delivery {delivery_id} was relayed already"}, status_code=400)
        event = alias_set_event(move.name, move.version, move.alias, ACTOR, move.moved_at, delivery_id)
        try:
            await app.state.prefect.request("POST", "/events", json=[event.model_dump(mode="json")])
        except Exception as e:  # noqa: BLE001 - any failure: not relayed, MLflow retries
            deliveries.release(delivery_id)
            log.error("Prefect did not take the event of delivery %s: %s", delivery_id, e)
            return JSONResponse({"error": "Prefect server unavailable"}, status_code=503)
        log.info("%s -> v%s on %s (delivery %s): event %s", move.alias, move.version, move.name, delivery_id, event.id)
        return JSONResponse({"relayed": True, "delivery_id": delivery_id, "event_id": str(event.id)})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/mlflow-webhook", receive, methods=["POST"]), Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
    )
    return app


async def _read(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ws.Rejected(400, f"body over {MAX_BODY} bytes")
    return body


def serve(host: str, port: int, secret: str, models: frozenset[str]) -> None:
    import uvicorn
    from prefect.settings import PREFECT_API_URL

    from peftflow.errors import UserError

    if not PREFECT_API_URL.value():
        raise UserError("PREFECT_API_URL is not set: the relay sends events to a running Prefect server")
    # Own handlers, not uvicorn's logging config: Prefect has configured logging on import, and
    # uvicorn's access formatter fails on records that went through it. One line per delivery
    # comes from the relay itself, so uvicorn's access log is off.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in (log.name, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
    uvicorn.run(create_app(secret, models), host=host, port=port, log_config=None, access_log=False)
