"""The shop transforms with a deliberately broken inverse of orders (amounts come back x10)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dualwrite.config import MigrationConfig
from dualwrite.transform import Transforms
from examples.shop.transform import build_transforms


def break_orders(registry: Transforms) -> Transforms:
    """Wrap the inverse of the orders table so it writes ten times the cents."""
    label = next(t for t in registry.inverses if t.endswith(".orders"))
    good = registry.inverses[label]

    def broken(row: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
        out = {table: dict(values) for table, values in (good(row) or {}).items()}
        for values in out.values():
            values["amount_cents"] *= 10
        return out

    registry.inverses[label] = broken
    return registry


def make_transforms(config: MigrationConfig) -> Transforms:
    first = config.tables[0]
    return break_orders(build_transforms(first.source.schema, first.target.schema))
