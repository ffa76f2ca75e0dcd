"""Throughput benchmarks (not tests): `python -m benchmarks.moe_layer`, `python -m benchmarks.train_step`,
`python -m benchmarks.ranks`. Each prints a table of ratios measured side by side in one run and writes
JSON under benchmarks/results/."""
