"""`python -m es_workers.run_dramatiq ARGS`: Dramatiq's command line with its main process
logging in the es_workers format (`log_level`, `log_format`).

`es-workers worker` runs it with `--skip-logging`, so Dramatiq installs no format of its
own; each worker process takes ours from `WorkerProcessSetup` once it has imported the app.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main

from .observability import configure_logging, remove_made_metrics_dir
from .settings import load_settings, warn_unknown_variables


def run() -> int:
    settings = load_settings(report_unknown=False)
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_variables()
    try:
        code: int = main()  # type: ignore[no-untyped-call]
    finally:
        remove_made_metrics_dir()  # the worker processes have exited
    return code


if __name__ == "__main__":
    sys.exit(run())
