"""Data files in object storage: LLaMA-Factory's `cloud_file_name: s3://bucket/key`.

Objects are fetched with boto3, which reads the standard AWS settings (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL /
AWS_ENDPOINT_URL_S3 for MinIO or another S3-compatible store). Each object is cached under
cache_dir("s3") by bucket, key and ETag: an unchanged object is never downloaded twice, a changed
one (new ETag) is. A key ending in `/` (or one that is only a prefix) means every object under it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from peftflow.errors import UserError
from peftflow.paths import cache_dir


def parse_s3_uri(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise UserError(f"cloud_file_name {uri!r}: expected s3://bucket/key")
    return u.netloc, u.path.lstrip("/")


def _client():
    import boto3

    return boto3.client("s3")


def fetch(uri: str) -> list[tuple[Path, str]]:
    """Local cached copies of the object(s) at `uri`: [(path, "s3://bucket/key"), ...], sorted by key."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(uri)
    s3 = _client()
    try:
        objects = []
        if key and not key.endswith("/"):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
                objects = [(key, head["ETag"])]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        if not objects:  # a prefix: every object below it
            prefix = key if key.endswith("/") or not key else key + "/"
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            objects = sorted(
                (o["Key"], o["ETag"])
                for page in pages
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/") and not Path(o["Key"]).name.startswith(".")
            )
        if not objects:
            raise UserError(f"cloud_file_name {uri}: no such object or prefix")
        return [(_cached(s3, bucket, k, etag), f"s3://{bucket}/{k}") for k, etag in objects]
    except ClientError as e:
        err = e.response.get("Error", {})
        raise UserError(f"cloud_file_name {uri}: {err.get('Code')}: {err.get('Message') or e}") from None
    except BotoCoreError as e:
        raise UserError(f"cloud_file_name {uri}: {e}") from None


def _cached(s3, bucket: str, key: str, etag: str) -> Path:
    slot = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
    tag = hashlib.sha256(etag.strip('"').encode()).hexdigest()[:16]
    target = cache_dir("s3") / slot / tag / Path(key).name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent) + ".lock"):
        if not target.is_file():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
            try:
                # IfMatch: the bytes are those of the ETag the cache slot is named after
                body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
                with os.fdopen(fd, "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        f.write(chunk)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return target
