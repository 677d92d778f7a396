"""Versioned, self-describing prompt checkpoints: only what was trained, written atomically.

A store is one directory::

    prompts_v0001.pt  prompts_v0002.pt  ...   # every version is kept
    current.json                               # {"version": 2}: the one that is served

Each file holds the prompts/updaters/head tensors plus everything needed to judge and reload them:
the SLPT config, the backbone's identity and weight hash, class names, parameter counts, training-set
size and validation metrics. Writes go to a temporary file that is fsync'ed and renamed, so a process
killed mid-write leaves the previous version intact. Rolling back moves ``current.json`` one version
back (``python -m apps.slpt.model.checkpoints --model-dir DIR rollback``).

    python -m apps.slpt.model.checkpoints --model-dir model/slpt list
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from apps.slpt.model.backbone import check_state_dict
from apps.slpt.model.prompts import is_backbone_key

FORMAT = "slpt-prompts"
# 2: the SLPT v2 design (prompts in the decoder, decoder deltas, organ-based tumour head). Version 1 files
# hold v1's prompts on every backbone stage and its 3x3x3 head: nothing of them maps onto v2.
# 3: the organ is the frozen backbone's own (no delta on its final conv) and each set's coarse evidence has a
# gain that starts small (0.1). A version 2 file's tumour log-odds were learnt against the tuned decoder's organ.
FORMAT_VERSION = 3
DESIGNS = {1: "SLPT v1 (prompts on every backbone stage, 3x3x3 task head)", 2: "SLPT v2",
           3: "SLPT v2 on the frozen backbone's organ"}
_NAME = re.compile(r"^prompts_v(\d{4,})\.pt$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide checkpoints from other service accounts
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message says why."""


class PromptCheckpointStore:
    """The versions of one model's prompt checkpoints in ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, version: int) -> Path:
        return self.directory / f"prompts_v{version:04d}.pt"

    def versions(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def current(self) -> int | None:
        """The served version: ``current.json`` if valid, else the newest file, else ``None``."""
        pointer = self.directory / "current.json"
        versions = self.versions()
        if pointer.is_file():
            try:
                version = int(json.loads(pointer.read_text())["version"])
                if version in versions:
                    return version
            except (ValueError, KeyError, TypeError):
                pass  # a damaged pointer falls back to the newest version below
        return versions[-1] if versions else None

    def save(self, trainable: dict[str, torch.Tensor], metadata: dict[str, Any], make_current: bool = True) -> int:
        """Store a new version; returns its number."""
        version = (self.versions() or [0])[-1] + 1
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "design": DESIGNS[FORMAT_VERSION],
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": metadata,
            "state_dict": {k: v.detach().cpu() for k, v in trainable.items()},
        }
        self._write(version, payload)
        if make_current:
            self.set_current(version)
        return version

    def replace(self, version: int, trainable: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Overwrite one version in place, atomically (a training run improving its own best)."""
        payload = read_checkpoint(self.path(version))
        payload.update(metadata=metadata, state_dict={k: v.detach().cpu() for k, v in trainable.items()})
        self._write(version, payload)

    def _write(self, version: int, payload: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        try:
            atomic_write_bytes(self.path(version), buffer.getvalue())
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # What a training round's log and /train/ show: the disk, and that nothing served changed.
            raise OSError(e.errno, f"no space left on device: prompt checkpoint v{version} could not be written to "
                                   f"{self.directory}; nothing was published and the served version is "
                                   "unchanged") from e

    def set_current(self, version: int) -> None:
        if version not in self.versions():
            raise CheckpointError(f"no prompt checkpoint version {version} in {self.directory}")
        atomic_write_json(self.directory / "current.json", {"version": version})

    def rollback(self) -> int:
        """Serve the version before the current one; returns it."""
        current, versions = self.current(), self.versions()
        if current is None or versions.index(current) == 0:
            raise CheckpointError(f"nothing to roll back to in {self.directory} (versions: {versions})")
        previous = versions[versions.index(current) - 1]
        self.set_current(previous)
        return previous

    def read(self, version: int | None = None) -> dict[str, Any]:
        """The raw payload of ``version`` (default: current), validated for format."""
        version = self.current() if version is None else version
        if version is None:
            raise FileNotFoundError(f"no prompt checkpoint in {self.directory} yet: train the model first")
        return read_checkpoint(self.path(version))

    def summary(self, version: int) -> dict[str, Any]:
        """A short, JSON-ready description of one version; a damaged file is reported, not raised."""
        try:
            meta = self.read(version)["metadata"]
        except CheckpointError as e:
            return {"version": version, "error": str(e)}
        return {
            "version": version,
            "current": version == self.current(),
            "metrics": meta.get("metrics", {}),
            "train_size": meta.get("train_size"),
            "parameters": meta.get("parameters", {}),
            "created": meta.get("created"),
        }

    def describe(self) -> list[dict[str, Any]]:
        return [self.summary(v) for v in self.versions()]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of one checkpoint file, checked for format and structure.

    Loaded with ``weights_only=True``: a checkpoint holds tensors and plain metadata only, so a foreign
    pickle dropped into the model folder is refused instead of being executed.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"{path} is not a readable prompt checkpoint: {_load_error(e)}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an SLPT prompt checkpoint (format {FORMAT!r} expected)")
    if payload.get("format_version") != FORMAT_VERSION:
        held = DESIGNS.get(payload.get("format_version"), f"format version {payload.get('format_version')}")
        raise CheckpointError(f"{path} holds {held}, but this app serves {DESIGNS[FORMAT_VERSION]}: train a new "
                              "version (POST /train/slpt), or run the app release that wrote it")
    state = payload.get("state_dict")
    if not isinstance(payload.get("metadata"), dict) or not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path} is damaged: it lacks its metadata or its tensors")
    return payload


def _load_error(error: Exception) -> str:
    """torch's reason in one line; for a refused pickle, not its advice to load the file unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    refused = next((line for line in lines if line.startswith("WeightsUnpickler error:")), None)
    if refused is None:
        return lines[0].split(". ")[0]  # torch appends paragraphs of advice to the reason
    what = refused.split(":", 1)[1].split(" was not an allowed")[0].strip()
    return f"it holds more than tensors and plain data ({what}), so it was not unpickled"


def load_into(model: torch.nn.Module, payload: dict[str, Any], backbone_identity: dict[str, Any]) -> None:
    """Load a checkpoint's tensors into ``model``'s trainable parts, strictly.

    Raises:
        CheckpointError: the checkpoint was made for another backbone, or its tensors do not fit.
    """
    made_for = payload["metadata"].get("backbone", {})
    if made_for.get("sha256") != backbone_identity.get("sha256"):
        raise CheckpointError(
            f"prompt checkpoint v{payload.get('version')} was trained on backbone "
            f"{made_for.get('name')!r} (sha256 {str(made_for.get('sha256'))[:12]}…), but this app runs "
            f"{backbone_identity.get('name')!r} (sha256 {str(backbone_identity.get('sha256'))[:12]}…)"
        )
    trainable = {k: v for k, v in model.state_dict().items() if not is_backbone_key(k)}
    try:
        check_state_dict(trainable, payload["state_dict"], source=f"prompt checkpoint v{payload.get('version')}")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    model.load_state_dict(payload["state_dict"], strict=False)  # backbone keys are absent by design


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="prompt checkpoint directory")
    parser.add_argument("action", choices=["list", "rollback"])
    args = parser.parse_args(argv)
    store = PromptCheckpointStore(args.model_dir)
    if args.action == "rollback":
        print(json.dumps({"current": store.rollback()}))
    else:
        print(json.dumps(store.describe(), indent=1))


if __name__ == "__main__":
    main()
