"""The ``--reverse`` flag: run a command on the rollback direction of the migration."""

from __future__ import annotations

import os
import sys

import click

from dualwrite import load_migration
from dualwrite.config import MigrationConfig
from dualwrite.transform import Transforms, load_transforms

reverse_option = click.option(
    "--reverse",
    is_flag=True,
    help="The rollback direction: new tables -> old tables by the inverse transforms "
    "(see `dualwrite reverse --help`).",
)


def load_direction(migration_file: str, reverse: bool) -> MigrationConfig:
    """The migration file, turned around with ``reverse`` (which loads the transforms)."""
    config = load_migration(migration_file)
    _import_from_here()
    if not reverse:
        return config
    from dualwrite.reverse import reverse_config

    return reverse_config(config)


def transforms_of(config: MigrationConfig) -> Transforms:
    """The migration's transforms, its transform module imported from the current directory."""
    _import_from_here()
    return load_transforms(config)


def _import_from_here() -> None:
    # The transform module is imported relative to the current directory, like `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
