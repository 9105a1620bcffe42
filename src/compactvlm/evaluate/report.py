"""Results as a Markdown table (one row per run, one column per dataset, plus PRT against a reference
run), a matplotlib plot of a score against the number of vision tokens, one line per method, and the line of
chance / majority baselines printed beside a benchmark's scores."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import CompactVLMError
from .prt import collect_runs, load_results, prt_table


def baselines_text(baselines: Mapping[str, tuple[float, float | None]]) -> str:
    """``Benchmark.baselines``'s output as one line: "chance / majority per family (...): fam c / m, ..."."""
    return "chance / majority per family (MME: its total; – where the build records none): " + ", ".join(
        f"{fam} {c:.1f} / {'–' if m is None else f'{m:.1f}'}" for fam, (c, m) in baselines.items())


def _runs(results) -> dict[str, dict]:
    if isinstance(results, Mapping) and all(isinstance(v, Mapping) and "scores" in v for v in results.values()):
        return dict(results)
    items = list(results)
    if items and isinstance(items[0], (str, os.PathLike)):
        items = load_results(items)
    return collect_runs(items)


def results_table(results, reference: str | None = None, datasets: Sequence[str] | None = None,
                  digits: int = 1) -> str:
    """Markdown table. ``results``: metrics dicts, (path, dict) pairs, metrics.json paths/folders, or
    the output of ``collect_runs``. Rows sorted by method, then vision tokens."""
    runs = _runs(results)
    if not runs:
        raise CompactVLMError("no results to tabulate", "pass metrics.json files written by evaluate()")
    cols = list(datasets) if datasets else sorted({d for r in runs.values() for d in r["scores"]})
    prts = prt_table(runs, reference, cols) if reference else {}
    head = ["Run", "Method", "Vision tokens", *cols] + ([f"PRT vs {reference} (%)"] if reference else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]

    def order(kv):
        name, r = kv
        return (str(r["method"]), r["vision_tokens"] if r["vision_tokens"] is not None else 1e9, name)

    for name, r in sorted(runs.items(), key=order):
        cells = [name, str(r["method"]), "" if r["vision_tokens"] is None else str(r["vision_tokens"])]
        cells += [f"{r['scores'][c]:.{digits}f}" if c in r["scores"] else "–" for c in cols]
        if reference:
            cells.append(f"{prts[name]['prt']:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_tokens(results, out_png: str | os.PathLike, dataset: str | None = None,
                            reference: str | None = None, title: str | None = None) -> Path:
    """PNG of ``dataset``'s score (or PRT when ``dataset`` is "prt", the default with a ``reference``)
    against vision tokens, one line per method. Runs without ``vision_tokens`` are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(results)
    if dataset is None:
        dataset = "prt" if reference else next(iter(sorted({d for r in runs.values() for d in r["scores"]})), None)
    if dataset is None:
        raise CompactVLMError("no scores to plot", "pass metrics.json files written by evaluate()")
    if dataset == "prt":
        if not reference:
            raise CompactVLMError("plotting PRT needs a reference run", "pass reference='<run name>'")
        values = {n: p["prt"] for n, p in prt_table(runs, reference).items()}
        ylabel = f"PRT vs {reference} (%)"
    else:
        values = {n: r["scores"][dataset] for n, r in runs.items() if dataset in r["scores"]}
        ylabel = dataset
    lines: dict[str, list[tuple[float, float]]] = {}
    for name, v in values.items():
        tok = runs[name]["vision_tokens"]
        if tok is not None:
            lines.setdefault(str(runs[name]["method"]), []).append((float(tok), float(v)))
    if not lines:
        raise CompactVLMError(f"no run has both vision_tokens and a {dataset!r} score",
                              "pass run_info={'vision_tokens': N, 'method': ...} to evaluate()")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(ticks, [str(int(t)) if t == int(t) else str(t) for t in ticks])
    ax.set_xlabel("vision tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs vision tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(paths: Iterable[str | os.PathLike], out_md: str | os.PathLike, reference: str | None = None,
                 plot: str | os.PathLike | None = None, datasets: Sequence[str] | None = None) -> Path:
    """A Markdown file with the table (and the plot, if ``plot`` is given)."""
    runs = collect_runs(load_results(paths))
    text = results_table(runs, reference=reference, datasets=datasets)
    if plot:
        p = plot_accuracy_vs_tokens(runs, plot, reference=reference)
        text += f"\n![accuracy vs vision tokens]({os.path.relpath(p, Path(out_md).parent)})\n"
    out = Path(out_md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
