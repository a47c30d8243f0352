"""Example applications built on es_workers (also installed as `es_workers.examples`)."""
