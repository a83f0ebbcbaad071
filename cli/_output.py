"""Console output owned by the CLI: rich for people, JSON for machines."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(payload: Any) -> None:
    """Write one JSON document to stdout (dataclasses become objects)."""

    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        return str(obj)

    sys.stdout.write(json.dumps(payload, default=default, sort_keys=True) + "\n")
    sys.stdout.flush()
