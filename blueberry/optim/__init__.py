"""Optimizers (AdamW, Muon + AdamW hybrid), parameter grouping and LR schedules."""
