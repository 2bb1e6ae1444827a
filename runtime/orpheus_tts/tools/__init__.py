"""Clients of a running server: `say`, `warmup` and `bench`."""
