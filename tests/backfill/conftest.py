"""Backfill tests reuse the worker tests' source/target pipeline fixture."""

from tests.worker.conftest import merge_pipeline

__all__ = ["merge_pipeline"]
