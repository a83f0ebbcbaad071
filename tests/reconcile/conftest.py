"""Reconcile tests reuse the worker tests' pipeline fixture."""

from tests.worker.conftest import merge_pipeline

__all__ = ["merge_pipeline"]
