"""Run logs: one JSON object per line in ``OUT/metrics.jsonl``, a tqdm bar, optional TensorBoard.

Only the main process writes. Every record has ``step`` and ``time`` (seconds since the run started) and an
``event`` (``train``, ``eval``, ``checkpoint``, ``start``, ``end``, ``nan``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CompactVLMError

METRICS = "metrics.jsonl"


def read_events(output_dir: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` in order ([] without one); a line cut by a kill mid-write is
    skipped."""
    path = Path(output_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunLogger:
    def __init__(self, output_dir: Path, enabled: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.t0 = time.time()
        self.path = Path(output_dir) / METRICS
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise CompactVLMError("logging.tensorboard is on but the tensorboard package is not installed",
                                      "pip install tensorboard, or set logging.tensorboard=false") from None
            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        rec = {"event": event, "step": step, "time": round(time.time() - self.t0, 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=_jsonable) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def progress(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
            self.bar.refresh()

    def info(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
