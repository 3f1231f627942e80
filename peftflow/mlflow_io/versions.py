"""Registered model versions: the small reference tasks pass around, and finding versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftflow.mlflow_io.tracking import mlflow_client


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    uri: str  # models:/NAME/VERSION
    tags: dict[str, str]


def version_ref(mv: Any) -> ModelVersionRef:
    return ModelVersionRef(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        uri=f"models:/{mv.name}/{mv.version}",
        tags=dict(mv.tags or {}),
    )


def get_version_by_alias(name: str, alias: str) -> ModelVersionRef | None:
    from mlflow.exceptions import MlflowException

    try:
        return version_ref(mlflow_client().get_model_version_by_alias(name, alias))
    except MlflowException as e:
        # no such model: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_of_run(name: str, run_id: str, kind: str) -> Any | None:
    """The first version of `name` registered from `run_id` shipping `kind` (tag `peftflow.kind`:
    merged or adapter), as an MLflow ModelVersion, or None."""
    versions = [
        v
        for v in mlflow_client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if (v.tags or {}).get("peftflow.kind") == kind
    ]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    mlflow_client().set_model_version_tag(name, str(version), key, value)


def get_version(name: str, version: str) -> ModelVersionRef:
    return version_ref(mlflow_client().get_model_version(name, str(version)))


def version_number(name: str, version: str) -> str:
    """`version` as a version number: a number as given, an alias (`champion`) as the number it
    points at; ValueError when the alias points at nothing."""
    if version.isdigit():
        return version
    ref = get_version_by_alias(name, version)
    if ref is None:
        raise ValueError(f"{name}: no alias '{version}'")
    return ref.version
