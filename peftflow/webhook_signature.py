"""MLflow registry webhooks (MLflow 3.17): signature check and the alias-move payload.

MLflow signs a delivery the Standard Webhooks way (mlflow/webhooks/delivery.py), with the raw
secret as the HMAC key:

    X-MLflow-Delivery-Id: <uuid4>          X-MLflow-Timestamp: <unix seconds>
    X-MLflow-Signature:   v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">

and the body is `{"entity", "action", "timestamp" (ISO 8601), "data"}`; for
`model_version_alias.created`, `data` is `{"name", "alias", "version"}`. The payload names no
user: MLflow does not say who moved the alias.

A retry by MLflow resends the same delivery id and timestamp, so a delivery id is held only while
and after it is relayed (`DeliveryLog`); one seen again is a replay. The timestamp
bounds how long a captured request could be replayed at all. Pure Python: no MLflow, no Prefect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = ("model_version_alias", "created")
TOLERANCE_S = 300  # how old (or how far in the future) a signed timestamp may be


class Rejected(Exception):
    """A delivery that is not acted on: `status` 401 (not proven to come from MLflow, or stale)
    or 400 (signed but unusable: malformed, or a replay)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str, headers: dict[str, str], body: bytes, now: float | None = None, tolerance_s: int = TOLERANCE_S
) -> str:
    """Check signature and timestamp of one delivery; returns its delivery id. `headers` keys in
    lower case. Raises `Rejected(401, ...)`."""
    delivery_id, timestamp, signature = (
        headers.get(h, "") for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    )
    if not signature:
        raise Rejected(401, "unsigned request (no X-MLflow-Signature)")
    if not delivery_id or not timestamp.isdigit():
        raise Rejected(401, "X-MLflow-Delivery-Id or X-MLflow-Timestamp missing or malformed")
    version, _, given = signature.partition(",")
    try:
        given_digest = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        given_digest = b""
    expected = base64.b64decode(sign(secret, delivery_id, timestamp, body).partition(",")[2])
    # compare_digest on both sides: no timing difference between "bad version" and "bad digest"
    if not (hmac.compare_digest(version, SIGNATURE_VERSION) & hmac.compare_digest(given_digest, expected)):
        raise Rejected(401, "signature does not match")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance_s:
        raise Rejected(401, f"timestamp {timestamp} is {age:.0f} s off (tolerance {tolerance_s} s): stale or replayed")
    return delivery_id


@dataclass(frozen=True)
class AliasMove:
    """One `model_version_alias.created` delivery: `alias` now points at `name` v`version`."""

    name: str
    version: str
    alias: str
    moved_at: str  # ISO 8601, when MLflow sent it (right after the move)
    delivery_id: str


def parse(body: bytes, delivery_id: str) -> AliasMove | None:
    """The alias move in a verified body; None for any other registry event (nothing to relay).
    Raises `Rejected(400, ...)` when the body is not a well-formed MLflow delivery."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected(400, f"body is not JSON: {e}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("data"), dict)
        or not all(isinstance(raw.get(k), str) for k in ("entity", "action"))
    ):
        raise Rejected(400, "body is not an MLflow webhook delivery (`entity`, `action`, `data`)")
    if (raw.get("entity"), raw.get("action")) != ALIAS_CREATED:
        return None
    data = raw["data"]
    fields = {k: data.get(k) for k in ("name", "alias", "version")}
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
    if bad or not fields["version"].isdigit():
        raise Rejected(400, f"model_version_alias.created without a usable {', '.join(bad) or 'version'}")
    try:
        datetime.fromisoformat(str(raw.get("timestamp")))
    except ValueError:
        raise Rejected(400, f"`timestamp` {raw.get('timestamp')!r} is not ISO 8601") from None
    return AliasMove(fields["name"], fields["version"], fields["alias"], raw["timestamp"], delivery_id)


class DeliveryLog:
    """Delivery ids claimed in the last `keep_s` seconds (at least twice the timestamp tolerance:
    an older replay fails the timestamp check anyway). Thread-safe; bounded by `max_ids`.

    A delivery is claimed before it is relayed and released again if relaying fails, so MLflow's
    retry of it (same id) goes through while a replay, even a concurrent one, does not."""

    def __init__(self, keep_s: int = 2 * TOLERANCE_S, max_ids: int = 100_000):
        self._claimed: OrderedDict[str, float] = OrderedDict()
        self._keep_s, self._max = keep_s, max_ids
        self._lock = threading.Lock()

    def claim(self, delivery_id: str) -> bool:
        """True for a delivery id not claimed yet (it is now); False for a replay."""
        with self._lock:
            cutoff = time.monotonic() - self._keep_s
            while self._claimed and next(iter(self._claimed.values())) < cutoff:
                self._claimed.popitem(last=False)
            if delivery_id in self._claimed:
                return False
            self._claimed[delivery_id] = time.monotonic()
            while len(self._claimed) > self._max:
                self._claimed.popitem(last=False)
            return True

    def release(self, delivery_id: str) -> None:
        with self._lock:
            self._claimed.pop(delivery_id, None)
