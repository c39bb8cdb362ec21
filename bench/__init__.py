"""Benchmark scripts and their bench-only Django wiring (never imported by production code)."""
