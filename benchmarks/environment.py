"""Where a benchmark ran, for the headers of its tables: CPU model and flags, package versions."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from pathlib import Path


def cpuinfo() -> str:
    """The text of ``/proc/cpuinfo``, or ``""`` where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(default: str, text: str | None = None) -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` (or of ``text``), else ``default``."""
    for line in (cpuinfo() if text is None else text).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return default


def package_versions(names: Iterable[str], missing: str | None = None) -> dict[str, str]:
    """Installed versions of ``names``; a package that is not installed gets ``missing``, or is left out if None."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                found[name] = missing
    return found
