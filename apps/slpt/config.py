"""The app's one typed configuration, parsed once from MONAI Label's ``--conf key value`` strings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

CONF_PREFIX = "slpt_"


@dataclass
class SLPTConfig:
    """Settings of the SLPT app. Each field is set with ``--conf slpt_<field> <value>``.

    Args:
        backbone: bundle directory of the frozen backbone (``configs/inference.json`` +
            ``models/model.pt``); relative paths are taken from the app directory.
        sw_overlap: sliding-window overlap for inference, in [0, 1).
    """

    backbone: str = field(default="models/backbone", metadata={"help": "backbone bundle directory"})
    sw_overlap: float = field(default=0.25, metadata={"help": "sliding-window overlap in [0, 1)"})

    def __post_init__(self):
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"slpt_sw_overlap must be in [0, 1), got {self.sw_overlap}")

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | Path = ".") -> SLPTConfig:
        """Parse MONAI Label's string ``conf``; unknown ``slpt_*`` keys are an error, not a typo to ignore."""
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in conf.items():
            if not key.startswith(CONF_PREFIX):
                continue  # MONAI Label's own keys (e.g. server_mode)
            name = key[len(CONF_PREFIX):]
            if name not in names:
                known = ", ".join(CONF_PREFIX + n for n in sorted(names))
                raise ValueError(f"unknown setting {key!r}; known settings: {known}")
            values[name] = _coerce(key, raw, hints[name])
        config = cls(**values)
        backbone = Path(config.backbone)
        config.backbone = str(backbone if backbone.is_absolute() else Path(app_dir) / backbone)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, raw: Any, kind) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1", "yes"}
        if kind in (int, float):
            return kind(raw)
        if kind == "tuple[str, ...]" or getattr(kind, "__origin__", None) is tuple:
            return tuple(json.loads(raw)) if raw.startswith("[") else tuple(s for s in raw.split(",") if s)
        return raw
    except ValueError as e:
        raise ValueError(f"setting {key!r} expects {getattr(kind, '__name__', kind)}, got {raw!r}") from e
