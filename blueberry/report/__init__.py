"""Reports on finished runs and sweeps: tables, noise-aware rankings, health warnings, figures, HTML, W&B Reports."""
