"""Shared by the benchmarks: where results go and what machine produced them."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import psutil


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def write_result(out: dict, path: str) -> None:
    """Write one benchmark's JSON (with the machine description) and say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**out, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
