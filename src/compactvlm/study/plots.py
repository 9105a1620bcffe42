"""The report's figures: accuracy and TTFT versus the number of vision tokens reaching the LLM."""

from __future__ import annotations

from pathlib import Path

from .plan import StudyPlan, StudyRow


def _series(plan: StudyPlan, row: StudyRow) -> str:
    """The plot series a row belongs to: one line per method and variant, test-time variants apart."""
    if row.reduce:
        return f"{row.reduce} (training-free)"
    src = plan.row(row.from_) if row.from_ else row
    params = {**src.params, **(row.params if row.from_ else {})}
    name = "mbtf+stf" if src.compressor == "stf" and params.get("mbtf") else str(src.compressor)
    if params.get("attention") == "full":
        name += " (full attention)"
    if params.get("mask_source") == "given":
        name += " (given masks)"
    return name


def plot_results(plan: StudyPlan, rows: dict, out_md: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method = {r.name: _series(plan, r) for r in plan.rows}
    paths = []
    for key, ylabel, fname in (("overall", "SceneQA family mean (%)", "accuracy_vs_tokens"),
                               ("ttft_ms", "TTFT on CPU (ms)", "ttft_vs_tokens")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_method: dict[str, list] = {}
        for name, s in rows.items():
            y = s[key][0] if isinstance(s[key], tuple) else s[key]
            err = s[key][1] if isinstance(s[key], tuple) else None
            by_method.setdefault(method.get(name, name), []).append((s["tokens"], y, err, name))
        for m, pts in sorted(by_method.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], marker="o",
                        capsize=3, label=m, linestyle="-" if len(pts) > 1 else "none")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vision tokens reaching the LLM")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out_md.parent / f"{out_md.stem}_{fname}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths[0], paths[1]
