"""`python -m es_workers` is the `es-workers` command."""

from .cli import main

main()
