"""What the benchmarks share: the device, clocks that wait for the GPU, spread figures, the JSON record."""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_label(device: torch.device) -> str:
    """cpu, or cuda-<GPU name> (results from different GPUs must not overwrite each other)."""
    if device.type != "cuda":
        return device.type
    return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of fn takes, the GPU's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def spread(seconds: list[float]) -> dict[str, float]:
    """Median and quartiles: other processes share this machine's cores, so the median is the figure."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {"median_s": statistics.median(seconds), "p25_s": q[0], "p75_s": q[2], "min_s": min(seconds),
            "max_s": max(seconds), "n": len(seconds)}


def environment(device: torch.device) -> dict:
    env = {"device": device_label(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "machine": platform.machine(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.type == "cpu":
        try:
            import os
            env["load_avg_1min"] = os.getloadavg()[0]   # other processes on the same cores
        except OSError:
            pass
    return env


def write_json(record: dict, out: str | None, name: str, label: str) -> Path:
    """To --out, or benchmarks/results/<name>-<label>.json (label: the device, e.g. cpu)."""
    path = Path(out) if out else RESULTS / f"{name}-{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:,.0f}" if isinstance(c, float) and c >= 100 else
                                            f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]
                                           for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
