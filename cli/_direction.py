"""The ``--reverse`` flag: run a command on the rollback direction of the migration."""

from __future__ import annotations

import os
import sys

import click

from dualwrite import load_migration
from dualwrite.config import MigrationConfig
from dualwrite.reverse import reverse_config

reverse_option = click.option(
    "--reverse",
    is_flag=True,
    help="The rollback direction: new tables -> old tables by the inverse transforms "
    "(see `dualwrite reverse --help`).",
)


def load_direction(migration_file: str, reverse: bool) -> MigrationConfig:
    """The migration file, turned around with ``reverse`` (which loads the transforms)."""
    config = load_migration(migration_file)
    # The transform module is imported relative to the current directory, like `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return reverse_config(config) if reverse else config
