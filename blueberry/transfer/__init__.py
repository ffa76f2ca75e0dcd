"""Analysis of how a model behaves across sizes: the coordinate check (coords.py). The parametrization
rules themselves are model code (models/param.py); the lr*(width) fit over a sweep's run dirs is
a report (report/transfer.py)."""
