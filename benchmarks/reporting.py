"""Where measurement scripts put their results: ``result.json`` (everything) and ``result.md`` (the table)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_report(out: Path, result: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    (out / "result.md").write_text(table)
    print(table)


def tree_state(tree: Path = ROOT) -> dict:
    """The commit of ``tree`` and whether it holds uncommitted changes (empty outside git)."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))} if commit else {}


def machine(device: str | torch.device) -> dict:
    """What a result was measured on: CPU model and cores, torch threads, device and GPU, torch version."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
            "platform": platform.platform()}
