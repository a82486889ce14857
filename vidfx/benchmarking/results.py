"""benchmarks/RESULTS.md: each benchmark owns one `## ` section and rewrites only that."""

from __future__ import annotations

import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md"


def update_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section starting at the line `heading` (up to the next `## ` heading), or append it.

    `body` includes the heading line itself.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.rstrip("\n").splitlines()
    new = body.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        out = [*lines, "", *new]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        out = [*lines[:start], *new, *([""] + lines[end:] if end < len(lines) else [])]
    path.write_text("\n".join(out) + "\n")


def cpu_name() -> str:
    """The CPU's model name, for the headers of results."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
