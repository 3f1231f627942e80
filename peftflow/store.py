"""The run store: a run's durable state in object storage (any fsspec URL: `s3://bucket/prefix`,
`gs://...`, `file:///shared/...`), so a run outlives the machine it started on.

Set by the config key `storage` or, when that is unset, the environment variable
`PEFTFLOW_STORAGE`. Unset: nothing here runs and every path stays on local disk.

Layout under the store URL: `runs/<registered model>/<run dir name>/<what>/...`, one directory
per object set (a checkpoint, the adapter, the merged model, the steps' reports). Every directory
is written file by file and then sealed by a manifest (`_manifest.json`: each file's size and
sha256), written last; a directory without a manifest (an upload cut short) or whose files do not
match it (a half-written or replaced object) is never used. Local disk stays a cache in front of
the store: a fetch downloads into a scratch directory beside the target, checks every file, and
renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from peftflow.atomic import build_once
from peftflow.errors import UserError

log = logging.getLogger("peftflow")

STORAGE_ENV = "PEFTFLOW_STORAGE"
MANIFEST = "_manifest.json"


def storage_url(configured: str | None) -> tuple[str, str] | None:
    """(URL, where it was set) from the config key, else `PEFTFLOW_STORAGE`; None when neither is set."""
    if configured:
        return configured, "storage"
    env = os.environ.get(STORAGE_ENV, "").strip()
    return (env, STORAGE_ENV) if env else None


def check_url(url: str, source: str = "storage") -> str:
    """The URL, or one line naming `source` (the key or the variable) when fsspec cannot open it."""
    import fsspec

    protocol, sep, rest = url.partition("://")
    if not sep or not protocol or not rest.strip("/"):
        raise UserError(f"{source}: {url!r} is not a storage URL; expected PROTOCOL://PATH, e.g. s3://bucket/peftflow")
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UserError(f"{source}: unknown storage protocol {protocol!r} in {url!r} (s3, gs, az, file, ...)") from None
    except ImportError as e:
        raise UserError(f"{source}: {protocol}:// needs a package that is not installed ({e})") from None
    return url


def open_store(configured: str | None) -> RunStore | None:
    """The run store this process writes to and reads from, or None (local disk only)."""
    found = storage_url(configured)
    if found is None:
        return None
    return RunStore(check_url(*found))


def run_key(registered_model: str, run_dir: str | Path) -> str:
    """Where one run dir lives in the store: the same on every machine, whatever its home."""
    return f"runs/{registered_model}/{Path(run_dir).name}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunStore:
    """Sealed directories under one fsspec URL."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key.strip('/')}"

    def put_dir(self, local: str | Path, key: str, only: tuple[str, ...] = ()) -> None:
        """Upload `local` (or only the files named in `only`) as `key`, sealed by its manifest
        (written last). An earlier copy's manifest goes first, so a re-upload cut short is not
        taken for the old, complete one."""
        local, dest = Path(local), self._path(key)
        files = [local / n for n in only] if only else sorted(p for p in local.rglob("*") if p.is_file())
        if self.fs.exists(f"{dest}/{MANIFEST}"):
            self.fs.rm_file(f"{dest}/{MANIFEST}")
        manifest = {}
        for p in files:
            rel = p.relative_to(local).as_posix()
            self.fs.makedirs(f"{dest}/{rel}".rsplit("/", 1)[0], exist_ok=True)  # a local or mounted store needs them
            self.fs.put_file(str(p), f"{dest}/{rel}")
            manifest[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        self.fs.makedirs(dest, exist_ok=True)
        self.fs.pipe_file(f"{dest}/{MANIFEST}", json.dumps({"files": manifest}, indent=1).encode())
        log.info("stored %s (%d files) in %s/%s", local.name, len(files), self.url, key)

    def manifest(self, key: str) -> dict[str, dict] | None:
        """The sealed file list of `key`, or None when there is none (never uploaded, or cut short)."""
        try:
            raw = json.loads(self.fs.cat_file(f"{self._path(key)}/{MANIFEST}"))
            return dict(raw["files"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def get_dir(self, key: str, local: str | Path) -> bool:
        """Download `key` into `local` (replacing it) when it is sealed and every file matches its
        manifest; False (and `local` untouched) otherwise."""
        local = Path(local)
        files = self.manifest(key)
        if files is None:
            return False
        scratch = local.with_name(f".{local.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            for rel, meta in files.items():
                target = scratch / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{self._path(key)}/{rel}", str(target))
                if target.stat().st_size != meta["size"] or _sha256(target) != meta["sha256"]:
                    log.warning("store %s/%s: %s does not match its manifest; not used", self.url, key, rel)
                    return False
            scratch.mkdir(parents=True, exist_ok=True)
            if local.exists():
                shutil.rmtree(local)
            local.parent.mkdir(parents=True, exist_ok=True)
            scratch.rename(local)
            log.info("fetched %s from %s/%s", local.name, self.url, key)
            return True
        except FileNotFoundError:
            log.warning("store %s/%s: a file of its manifest is missing; not used", self.url, key)
            return False
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def children(self, key: str) -> list[str]:
        """Names of the directories directly under `key` (sealed or not)."""
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self._path(key), detail=True)
        except FileNotFoundError:
            return []
        return sorted(Path(e["name"]).name for e in entries if e.get("type") == "directory")

    def remove(self, key: str) -> None:
        """Delete `key`: the manifest first, so a removal cut short leaves nothing that looks usable."""
        path = self._path(key)
        if self.fs.exists(f"{path}/{MANIFEST}"):
            self.fs.rm_file(f"{path}/{MANIFEST}")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def output_key(registered_model: str, path: str | Path) -> str:
    """A step output (`<run dir>/adapter`, `merged`, `eval_report.json`) in the store."""
    return f"{run_key(registered_model, Path(path).parent)}/{Path(path).name}"


def portable(storage: str | None, registered_model: str, path: str | Path) -> str:
    """How a cache key names a step output: its place in the store when there is one (the same
    on every machine), else the local path (as before the store existed)."""
    return output_key(registered_model, path) if storage_url(storage) else str(path)


def save_output(storage: str | None, registered_model: str, path: str | Path) -> None:
    """Upload a finished step output (a directory or one file), sealed; nothing without a store."""
    store, path = open_store(storage), Path(path)
    if store is None or not path.exists():
        return
    if path.is_dir():
        store.put_dir(path, output_key(registered_model, path))
    else:
        store.put_dir(path.parent, output_key(registered_model, path), only=(path.name,))


def restore_output(storage: str | None, registered_model: str, path: str | Path) -> bool:
    """Make sure a step output is on local disk: True when it is (already, or fetched sealed and
    checked from the store); False when it is neither here nor sealed in the store."""
    path = Path(path)
    if path.exists():
        return True
    store = open_store(storage)
    if store is None:
        return False
    key = output_key(registered_model, path)
    files = store.manifest(key)
    if files is None:
        return False
    if set(files) != {path.name}:  # a directory
        return store.get_dir(key, path)
    scratch = path.with_name(f".{path.name}.fetched")
    if not store.get_dir(key, scratch):
        return False
    (scratch / path.name).rename(path)
    shutil.rmtree(scratch, ignore_errors=True)
    return True


def build_sealed(
    storage: str | None, key: str, target: Path, build: Callable[[Path], None], ready: Callable[[Path], bool]
) -> Path:
    """build_once with the store in front, for a content-keyed cache entry (`cache/prepared/<fingerprint>`,
    `cache/models/<name>/<fingerprint>`): a sealed, matching copy under `key` is fetched instead of
    built; one built here is sealed in the store, replacing a copy that did not check out (the
    next machine fetches it instead of building it again). Without a store: build_once."""
    if ready(target):  # the usual case: no store connection needed
        return target
    store = open_store(storage)
    if store is None:
        return build_once(target, build, ready)
    built = []

    def fetch_or_build(out: Path) -> None:
        if not store.get_dir(key, out):
            build(out)
            built.append(out)

    build_once(target, fetch_or_build, ready)
    if built:
        store.put_dir(target, key)
    return target
