"""Offline check of MONAI bundle ``metadata.json`` files.

``meta_schema_20240725.json`` here is written from MONAI's documented
required fields and types of its 20240725 metadata schema (MONAI's own check,
``monai.bundle verify_metadata``, downloads the schema, and tests run without
network). :func:`validate_metadata` implements the JSON-Schema keywords that
file uses (``type``, ``required``, ``properties``, ``additionalProperties``,
``items``), so no ``jsonschema`` package is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["META_SCHEMA", "load_schema", "validate_metadata"]

META_SCHEMA = Path(__file__).resolve().parent / "meta_schema_20240725.json"

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def load_schema(path: str | os.PathLike = META_SCHEMA) -> dict:
    """The schema as a dict."""
    return json.loads(Path(path).read_text())


def _is(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: Mapping[str, Any], where: str, errors: list[str]) -> None:
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, n) for n in names):
            errors.append(f"{where}: expected {' or '.join(names)}, got {type(value).__name__} {value!r}")
            return
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{where}.{key}", errors)
            elif extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, Mapping):
                _check(item, extra, f"{where}.{key}", errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", errors)


def validate_metadata(
    meta: Mapping[str, Any] | str | os.PathLike, schema: Mapping[str, Any] | None = None
) -> list[str]:
    """Problems of a bundle's metadata (a dict or a ``metadata.json`` path)
    against ``schema`` (default: :data:`META_SCHEMA`); an empty list when valid."""
    if not isinstance(meta, Mapping):
        meta = json.loads(Path(meta).read_text())
    errors: list[str] = []
    _check(meta, load_schema() if schema is None else schema, "metadata", errors)
    return errors
