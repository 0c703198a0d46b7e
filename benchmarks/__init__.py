"""Benchmarks: each prints its figure and the ratio to a floor measured in the same run."""
