"""The web dashboard: `es-workers dashboard APP` (needs the `dashboard` extra).

`es_workers.dashboard.app.create_app(store)` builds the Starlette app; this package's own
import pulls in nothing beyond es_workers, so the CLI can check its options first.
"""
