"""MLflow webhook deliveries: the signature check against MLflow's own signer, replays, payloads."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from peftflow import webhook_signature as ws

SECRET = "s3cret"
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-12-01T10:00:00.5+00:00",
        "data": {"name": "orders", "alias": "champion", "version": "3"},
    }
)


def headers(body: str = BODY, secret: str = SECRET, delivery: str = "d-1", ts: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if ts is None else ts)
    return {
        "x-mlflow-delivery-id": delivery,
        "x-mlflow-timestamp": ts,
        "x-mlflow-signature": _generate_hmac_signature(secret, delivery, ts, body),
    }


def test_a_delivery_signed_by_mlflow_verifies_and_parses():
    assert ws.sign(SECRET, "d-1", "17", BODY.encode()) == _generate_hmac_signature(SECRET, "d-1", "17", BODY)
    delivery = ws.verify(SECRET, headers(), BODY.encode())
    move = ws.parse(BODY.encode(), delivery)
    assert move == ws.AliasMove("orders", "3", "champion", "2026-12-01T10:00:00.5+00:00", "d-1")


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "x-mlflow-signature"}, b), "unsigned"),
        (lambda h, b: (headers(secret="other"), b), "does not match"),
        (lambda h, b: (h, b.replace(b'"3"', b'"4"')), "does not match"),
        (lambda h, b: ({**h, "x-mlflow-delivery-id": "d-2"}, b), "does not match"),
        (lambda h, b: ({**h, "x-mlflow-signature": "v1,@@not-base64@@"}, b), "does not match"),
        (lambda h, b: ({**h, "x-mlflow-signature": "v2," + h["x-mlflow-signature"][3:]}, b), "does not match"),
        (lambda h, b: ({**h, "x-mlflow-timestamp": "soon"}, b), "malformed"),
        (lambda h, b: (headers(ts=int(time.time()) - 3600), b), "stale or replayed"),
        (lambda h, b: (headers(ts=int(time.time()) + 3600), b), "stale or replayed"),
    ],
)
def test_unsigned_tampered_or_stale_deliveries_are_401(change, why):
    h, body = change(headers(), BODY.encode())
    with pytest.raises(ws.Rejected) as e:
        ws.verify(SECRET, h, body)
    assert e.value.status == 401 and why in e.value.reason


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"[1, 2]", "not an MLflow"),
        (b'{"data": 3}', "not an MLflow"),
        (b'{"data": {}}', "not an MLflow"),
        (
            json.dumps(
                {
                    "entity": "model_version_alias",
                    "action": "created",
                    "timestamp": "2026-12-01T10:00:00Z",
                    "data": {"name": "m", "alias": "champion", "version": "x"},
                }
            ).encode(),
            "usable version",
        ),
        (
            json.dumps(
                {
                    "entity": "model_version_alias",
                    "action": "created",
                    "timestamp": "2026-12-01T10:00:00Z",
                    "data": {"name": "", "alias": "champion", "version": "1"},
                }
            ).encode(),
            "usable name",
        ),
        (
            json.dumps(
                {
                    "entity": "model_version_alias",
                    "action": "created",
                    "timestamp": "yesterday",
                    "data": {"name": "m", "alias": "champion", "version": "1"},
                }
            ).encode(),
            "not ISO 8601",
        ),
    ],
)
def test_signed_but_malformed_bodies_are_400(body, why):
    with pytest.raises(ws.Rejected) as e:
        ws.parse(body, "d-1")
    assert e.value.status == 400 and why in e.value.reason


def test_other_registry_events_are_not_alias_moves():
    body = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {"name": "m", "version": "1"},
        }
    ).encode()
    assert ws.parse(body, "d-1") is None


def test_a_delivery_is_claimed_once_and_released_when_relaying_failed():
    log = ws.DeliveryLog(keep_s=60)
    assert log.claim("d-1") and not log.claim("d-1")
    log.release("d-1")  # relaying failed: MLflow's retry (same id) may go through
    assert log.claim("d-1")
    expiring = ws.DeliveryLog(keep_s=0)
    assert expiring.claim("d-2")
    time.sleep(0.01)
    assert expiring.claim("d-2")  # forgotten after keep_s
