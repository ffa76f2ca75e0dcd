"""Sweeps from W&B sweep YAMLs: validation, trial commands, proposals and hyperband stopping."""
