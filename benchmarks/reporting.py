"""Where measurement scripts put their results: ``result.json`` (everything) and ``result.md`` (the table)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def write_report(out: Path, result: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    (out / "result.md").write_text(table)
    print(table)


def machine(device: str | torch.device) -> dict:
    """What a result was measured on: CPU model and cores, torch threads, device and GPU, torch version."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
            "platform": platform.platform()}
