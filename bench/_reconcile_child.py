"""The measured process of ``reconcile_vs_reladiff.py``: ``reconcile()`` on one migration
file, importing nothing the benchmark driver needs (its wall time is what a user's process
pays). Prints counts, times and peak RSS as one JSON line.

    python bench/_reconcile_child.py MIGRATION.toml WORKERS
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402


def main(config_path: str, workers: int) -> None:
    from dualwrite import load_migration, make_engine
    from dualwrite.transform import load_transforms
    from reconcile import reconcile

    if os.environ.get("BENCH_DEBUG"):
        import logging

        logging.basicConfig(
            level=logging.DEBUG, format="%(relativeCreated)6.0f %(name)s %(message)s"
        )
        logging.getLogger("kafka").setLevel(logging.WARNING)
    imported = time.perf_counter()
    config = load_migration(config_path)
    source, target = make_engine(config.source), make_engine(config.target)
    result = reconcile(source, target, config, load_transforms(config), workers=workers, wait_s=30)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - T0,
                "import_s": imported - T0,
                "call_s": time.perf_counter() - imported,
                "counts": result.counts,
                "status": result.status,
                "methods": [t.method for t in result.tables],
                "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    import gc

    gc.freeze()  # what ``dualwrite``'s entry point does before the process exits
