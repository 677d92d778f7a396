"""Where measurement scripts put their results: ``result.json`` (everything) and ``result.md`` (the table)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, result: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    (out / "result.md").write_text(table)
    print(table)
