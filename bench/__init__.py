"""Benchmarks for aura-actors: `python -m bench` (see `python -m bench --help`)."""
