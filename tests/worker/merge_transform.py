"""A transform module for tests: a merge with column ownership, a split, a filter, a failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dualwrite.config import MigrationConfig
from dualwrite.transform import Transforms

FIXED = {"boom": False}  # a test flips this to play "the transform bug was fixed"


def make_transforms(config: MigrationConfig) -> Transforms:
    """Schema names come from the migration file (each test has its own)."""
    return build(config.tables[0].source.schema, config.tables[0].target.schema)


def build(src: str, dst: str) -> Transforms:
    transforms = Transforms()
    s, d = src, dst
    transforms.target(
        f"{d}.person",
        key=["id"],
        owners={f"{s}.person": ["name", "email"], f"{s}.profile": ["tier"]},
    )
    transforms.target(f"{d}.address", key=["person_id"])

    @transforms.source(
        f"{s}.person", targets={f"{d}.person": {"id": "id"}, f"{d}.address": {"person_id": "id"}}
    )
    def person(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        if row["name"] == "boom" and not FIXED["boom"]:
            raise ValueError("the transform cannot handle 'boom'")
        out: dict[str, dict[str, Any]] = {
            f"{d}.person": {
                "id": row["id"],
                "name": row["name"],
                "email": (row["email"] or "").lower() or None,
            }
        }
        if row["city"] is not None:  # filtered out of address when there is no city
            out[f"{d}.address"] = {"person_id": row["id"], "city": row["city"]}
        return out

    @transforms.source(f"{s}.profile", targets={f"{d}.person": {"id": "person_id"}})
    def profile(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {f"{d}.person": {"id": row["person_id"], "tier": row["tier"]}}

    return transforms
