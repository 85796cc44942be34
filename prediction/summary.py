"""What ``pancreas predict`` reports: one ``CaseResult`` per case and the run's ``PredictSummary``.

The same facts go into ``predictions.json`` (``dataset.contract.predictions``); these
are the in-memory form the CLI prints (``PredictSummary.table``) and ``evaluate --run``
reads (``failed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CaseResult:
    case_id: str
    source: str
    output: str | None = None  # the NIfTI label map
    dicom_seg: str | None = None  # the DICOM Segmentation (prediction.dicomseg)
    error: str | None = None
    skipped: bool = False
    shape_zyx: tuple[int, ...] | None = None
    n_windows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    threads: int | None = None  # TensorFlow's intra-op threads the seconds were measured with
    statistics: dict[str, Any] | None = None  # review.statistics of the label map (prediction.previews)
    roi: dict[str, Any] | None = None  # what roi: auto did (prediction.volume.roi_record)


@dataclass
class PredictSummary:
    out_dir: Path
    results: list[CaseResult]
    seconds: float
    threads: int | None = None  # TensorFlow's intra-op threads (None: no Keras model was loaded)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.error]

    @property
    def n_done(self) -> int:
        return sum(1 for r in self.results if not r.error and not r.skipped)

    @property
    def n_skipped(self) -> int:
        return sum(1 for r in self.results if r.skipped)

    def table(self) -> str:
        """Readable per-case summary for the terminal."""
        head = (
            f"{'case':<24} {'status':<8} {'stored z,y,x':<16} {'windows':>7} {'roi':>7} {'prep s':>7} {'model s':>8} "
            f"{'stitch s':>8} {'export s':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.results:
            status = "failed" if r.error else "skipped" if r.skipped else "done"
            shape = "x".join(map(str, r.shape_zyx)) if r.shape_zyx else "-"
            s = r.seconds
            lines.append(
                f"{r.case_id:<24} {status:<8} {shape:<16} {r.n_windows:>7} {roi_cell(r.roi):>7} "
                f"{s.get('preprocess', 0):>7.2f} "
                f"{s.get('model', 0):>8.2f} {s.get('stitch', 0):>8.2f} {s.get('export', 0):>8.2f}"
            )
            if r.error:
                lines.append(f"    error: {r.error}")
        lines.append(
            f"{self.n_done} predicted, {self.n_skipped} up to date, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s -> {self.out_dir}"
        )
        if self.threads is not None:
            lines.append(f"TensorFlow threads: {self.threads} (--threads)")
        lines.append(f"volumes and tumours per case: {self.out_dir / 'statistics.csv'}")
        if (self.out_dir / "index.html").is_file():
            lines.append(f"previews: open {self.out_dir / 'index.html'} in a browser")
        return "\n".join(lines)


def roi_cell(roi: dict[str, Any] | None) -> str:
    """The table's roi column: windows the full pass kept / the whole grid's ("all" when it ran everywhere)."""
    if not roi or roi.get("mode") != "auto":
        return "-"
    if roi.get("boxes") is None:
        return "all"
    return f"{roi['windows']}/{roi['windows_whole']}"
