"""Transforms: one source change -> zero or more target row operations.

The same registry serves the stream (worker), the backfill and reconcile.
"""

from dualwrite.transform._declared import CONVERTERS, INVERSE_CONVERTERS, DeclaredTransformError
from dualwrite.transform._inverse import inverse_transforms
from dualwrite.transform._model import ReadBatch, ReadGroup, TargetOp, TargetSpec, key_text
from dualwrite.transform._registry import (
    SourceTransform,
    TransformError,
    Transforms,
    load_transforms,
)

__all__ = [
    "CONVERTERS",
    "INVERSE_CONVERTERS",
    "DeclaredTransformError",
    "ReadBatch",
    "ReadGroup",
    "SourceTransform",
    "TargetOp",
    "TargetSpec",
    "TransformError",
    "Transforms",
    "inverse_transforms",
    "key_text",
    "load_transforms",
]
