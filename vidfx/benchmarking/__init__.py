"""Benchmarks shared by `vidfx bench …` and the scripts in benchmarks/. Each module has register(parser)."""
