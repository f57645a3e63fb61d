"""Where a benchmark ran, for the headers of its tables: machine, package versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# CPU features that decide which kernels torch and OpenVINO use (bf16/AMX change OpenVINO's default precision).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


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


def machine_description(accelerator: str | None = None) -> str:
    """One line: OS, CPU model and flags, usable cores, RAM and, if given, the accelerator.

    Example: ``Linux x86_64, AMD EPYC (avx2), 2 cores, 24 GiB RAM, accelerator cpu``. Cores are those this
    process may run on (CPU affinity), not the machine's total.
    """
    text = cpuinfo()
    cpu = cpu_model(default=platform.processor() or platform.machine(), text=text)
    flags = [flag for flag in CPU_FLAGS if f" {flag}" in text]
    parts = [f"{platform.system()} {platform.machine()}", cpu + (f" ({', '.join(flags)})" if flags else "")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts.append(f"{cores} cores")
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        parts.append(f"{kib / 1024**2:.0f} GiB RAM")
    except (OSError, ValueError, IndexError):
        pass
    if accelerator:
        parts.append(f"accelerator {accelerator}")
    return ", ".join(parts)


def package_versions(names: Iterable[str], missing: str | None = None) -> dict[str, str]:
    """Installed versions of ``names``; a package that is not installed gets ``missing``, or is left out if None."""
    found = {}
    for name in names:
        if name == "anomalib-bgad":  # the code that runs (a source tree may differ from the installed metadata)
            import anomalib_bgad

            found[name] = anomalib_bgad.__version__
            continue
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                found[name] = missing
    return found


def versions(names: Iterable[str], missing: str | None = None) -> dict[str, str]:
    """The Python version followed by :func:`package_versions` of ``names``."""
    return {"python": platform.python_version(), **package_versions(names, missing)}


def git_commit() -> str:
    """Short commit hash of the repository's ``HEAD``, or ``""`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
