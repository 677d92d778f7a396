"""Start-up self-check: refuse to start on a package set other than the pinned one.

MONAI Label breaks in confusing ways on a monai, pydicom or dicomweb-client it was not built for
(see requirements.txt); naming the package at start-up saves an afternoon of tracebacks.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


def pinned_versions(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a requirements file."""
    pins = {}
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def version_problems(pins: dict[str, str], installed=metadata.version) -> list[str]:
    """One human-readable line per package that is missing or at another version."""
    problems = []
    for name, wanted in sorted(pins.items()):
        try:
            have = installed(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (need {name}=={wanted})")
            continue
        if have.split("+")[0] != wanted:  # local build tags like +cu128 do not matter
            problems.append(f"{name} is {have}, need {name}=={wanted}")
    return problems


def check_environment(requirements: Path = REQUIREMENTS) -> None:
    """Raise ``RuntimeError`` naming every broken pin; run this before the app builds anything."""
    problems = version_problems(pinned_versions(requirements))
    if problems:
        raise RuntimeError(
            "SLPT app refuses to start, the installed packages differ from requirements.txt:\n  - "
            + "\n  - ".join(problems)
            + "\nReinstall with: make install"
        )
