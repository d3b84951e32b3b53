"""The record of a mining run that `mine()` returns and the CLI prints."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._progress import format_duration


@dataclass
class MiningSummary:
    """What a `mine()` call did.

    `images` is the dataset size, `done` how many of its images are covered so far (decoded or
    failed), `errors` how many failed in the whole run, `processed` how many this call went
    through, in `elapsed` seconds. `status` is "finished", "stopped" (error budget exhausted) or
    "running" (interrupted). `dead_units` counts units that never fired (max never > 0) over the
    images seen. `resumed_from` is how many images an earlier call had covered (0 for a new run).
    """

    out: Path
    results: Path
    device: str
    layers: list[str]
    units: int
    images: int
    done: int
    errors: int
    processed: int
    elapsed: float
    status: str
    resumed_from: int = 0
    dead_units: int = 0
    already_finished: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Failed images over the dataset's images covered so far."""
        return self.errors / self.done if self.done else 0.0

    def __str__(self) -> str:
        if self.already_finished:
            head = f"nothing to do: {self.results} already holds a finished run of this configuration"
        elif self.status == "finished":
            head = "mining finished"
        elif self.status == "stopped":
            head = "mining stopped early"
        else:
            head = "mining interrupted"
        resumed = f" (resumed at {self.resumed_from:,})" if self.resumed_from and not self.already_finished else ""
        lines = [
            head,
            f"  images   {self.done:,} of {self.images:,}{resumed}; errors {self.errors:,} ({100 * self.error_rate:.2f}%)",
            f"  speed    {self.processed:,} images in {format_duration(self.elapsed)} = "
            f"{self.images_per_second:,.1f} img/s on {self.device}",
            f"  units    {self.units:,} in {len(self.layers)} layers ({', '.join(self.layers)}); "
            f"{self.dead_units:,} dead",
            f"  results  {self.results}",
        ]
        lines.extend(f"  note     {n}" for n in self.notes)
        return "\n".join(lines)
