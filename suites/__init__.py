"""Benchmark suites: inference latency, training throughput, accuracy."""

from dstbench.suites import inference, training, accuracy  # noqa: F401  (registers the suites)
