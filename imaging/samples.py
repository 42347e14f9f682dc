"""Real photographs that ship with an installed dependency, for checks and benchmarks without a data set."""

from __future__ import annotations

from pathlib import Path


def sample_photographs() -> list[Path]:
    """matplotlib's sample photographs: Grace Hopper (512x600 JPEG) and a product photo (PNG).

    Empty when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return []
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return [p for p in (folder / "grace_hopper.jpg", folder / "Minduka_Present_Blue_Pack.png") if p.is_file()]
