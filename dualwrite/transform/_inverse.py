"""The registry of the rollback direction, built from the forward registry's inverses.

Forward, source table ``S`` feeds target tables ``X`` through ``S``'s transform. In reverse,
each ``X`` is a source whose transform is ``X``'s inverse, and each ``S`` is a target:

- the key mapping of ``X -> S`` is the forward mapping ``{X key column: S key column}``
  turned around, so a delete on ``X`` finds the ``S`` rows to delete;
- ``S`` rebuilt from several ``X`` (the shop's ``legacy.customers`` comes back from
  ``shop.customers`` and ``shop.addresses``) is a merge: each ``X`` owns the columns its
  inverse declares (``transforms.inverse(X, columns={S: [...]})``);
- a table with a declared transform (rename, drop, constants, convert) gets an automatic
  inverse (:func:`declared_inverse`).
"""

from __future__ import annotations

from dualwrite.config import MigrationConfig
from dualwrite.transform._declared import declared_inverse
from dualwrite.transform._registry import RowFunction, SourceTransform, TransformError, Transforms

__all__ = ["inverse_transforms"]


def inverse_transforms(forward: Transforms, config: MigrationConfig) -> Transforms:
    """The registry that writes changes of the new tables back to the old ones.

    Raises :class:`TransformError` naming the table when a target has no inverse, a key
    mapping cannot be turned around, or a merged old table lacks column declarations; and
    :class:`~dualwrite.transform.DeclaredTransformError` for a declared conversion with no
    inverse. Pure (touches no database); the result is read-only once returned.
    """
    inverses: dict[str, RowFunction] = dict(forward.inverses)
    for table in config.tables:
        label, target = str(table.source), str(table.target)
        if label in forward.renamers and target not in inverses:
            inverses[target] = declared_inverse(table)
    writers: dict[str, list[SourceTransform]] = {}
    for st in forward.sources.values():
        for target in st.targets:
            writers.setdefault(target, []).append(st)
    reverse = Transforms()
    rebuilt_from: dict[str, list[str]] = {}
    for target in sorted(writers):
        function = inverses.get(target)
        if function is None:
            module = config.transform.module or "the transform module"
            raise TransformError(
                f"target {target} has no inverse transform, so its changes cannot be written "
                f"back for rollback; register one in {module} with @transforms.inverse({target!r})"
            )
        mappings: dict[str, dict[str, str]] = {}
        for st in writers[target]:
            mapping = st.targets[target]
            if not mapping:
                raise TransformError(
                    f"{st.source} -> {target}: the key mapping is learnt from the stream; declare "
                    f"`key = [...]` for {st.source} in the migration file to roll it back"
                )
            mappings[st.source] = {
                source_col: target_col for target_col, source_col in mapping.items()
            }
            rebuilt_from.setdefault(st.source, []).append(target)
        reverse.source(target, targets=mappings)(function)
    for source, targets in sorted(rebuilt_from.items()):
        key = _source_key(config, source, reverse, targets[0])
        owners = None
        if len(targets) > 1:
            owners = {}
            for target in targets:
                columns = forward.inverse_columns.get(target, {}).get(source)
                if columns is None:
                    raise TransformError(
                        f"{source} is rebuilt from {', '.join(targets)} in the rollback "
                        f"direction; declare the columns each inverse writes, e.g. "
                        f"@transforms.inverse({target!r}, columns={{{source!r}: [...]}})"
                    )
                owners[target] = columns
        reverse.target(source, key=key, owners=owners)
    reverse.check()
    return reverse


def _source_key(config: MigrationConfig, source: str, reverse: Transforms, via: str) -> list[str]:
    """The old table's key: as declared in the migration file, else as the mapping names it."""
    for table in config.tables:
        if str(table.source) == source and table.key:
            return list(table.key)
    return list(reverse.sources[via].targets[source])
