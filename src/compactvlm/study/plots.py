"""The report's figures: accuracy and TTFT versus the number of vision tokens reaching the LLM, and the trained
rows' learning curves (validation loss and test family mean against the last stage's step).

Every method family has one fixed colour + marker (``STYLES``), so a family looks the same in every figure and no
two series of a figure share both; series the table does not know take unused pairs (``series_styles``). The
accuracy figure carries the chance line and, where the results have one, the reference's blind-control line; the
legend sits outside the axes, series that share a token count are spread slightly sideways (the ticks mark the
true counts) and a footnote names the machine and thread count the numbers were measured with.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompactVLMError
from .plan import StudyPlan, StudyRow

#: series name (``_series``) -> (colour, marker); no two entries share a colour, none shares a marker either
STYLES: dict[str, tuple[str, str]] = {
    "mlp2x_gelu": ("#000000", "*"),  # the full-token reference
    "stf": ("#1f77b4", "o"),
    "mbtf+stf": ("#393b79", "s"),
    "avgpool": ("#ff7f0e", "^"),
    "concat": ("#8c564b", "v"),
    "qformer": ("#e377c2", "D"),
    "vistog": ("#2ca02c", "P"),
    "vistog (full attention)": ("#637939", "X"),
    "objects": ("#9467bd", "h"),
    "objects (given masks)": ("#e7ba52", "H"),
    "random (training-free)": ("#7f7f7f", "d"),
    "fastv (training-free)": ("#d62728", "<"),
    "visionzip (training-free)": ("#bcbd22", ">"),
    "avgpool (training-free)": ("#17becf", "p"),
}
_EXTRA_COLOURS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
                  "#dbdb8d", "#9edae5")
DODGE = 0.04
_EXTRA_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p", "d", "H", "*", "8")


@dataclass
class Reference:
    """A horizontal line on the accuracy figure (chance, the blind control) with its legend label."""

    y: float
    label: str
    style: str = "--"
    colour: str = "0.3"


def _series(plan: StudyPlan, row: StudyRow) -> str:
    """The plot series a row belongs to: one line per method and variant, test-time variants apart."""
    if row.reduce:
        return f"{row.reduce} (training-free)" if row.from_ else f"{row.reduce} (trained with it)"
    src = plan.row(row.from_) if row.from_ else row
    params = {**src.params, **(row.params if row.from_ else {})}
    name = "mbtf+stf" if src.compressor == "stf" and params.get("mbtf") else str(src.compressor)
    if params.get("attention") == "full":
        name += " (full attention)"
    if params.get("mask_source") == "given":
        name += " (given masks)"
    return name


def series_styles(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) for each series: the fixed one of ``STYLES``, else the first pair of the extra palette
    that no series of this figure uses (names in sorted order, so the choice does not depend on row order)."""
    names = sorted(set(names))
    out = {n: STYLES[n] for n in names if n in STYLES}
    used = set(out.values())
    free = [(c, m) for m in _EXTRA_MARKERS for c in _EXTRA_COLOURS]  # new colours first, then new markers
    for n in names:
        if n not in out:
            pick = next((p for p in free if p not in used), None)
            if pick is None:
                raise CompactVLMError(f"a figure with {len(names)} series has more than the {len(free)} extra styles",
                                      "add the new series to study.plots.STYLES")
            out[n] = pick
            used.add(pick)
    return out


def figure(plan: StudyPlan, rows: dict, key: str, ylabel: str, lines: Iterable[Reference] = (), footnote: str = ""):
    """One matplotlib figure of ``rows[*][key]`` (a value or (mean, CI half-width)) versus tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    method = {r.name: _series(plan, r) for r in plan.rows}
    by_method: dict[str, list] = {}
    for name, s in rows.items():
        y = s[key][0] if isinstance(s[key], (tuple, list)) else s[key]
        err = s[key][1] if isinstance(s[key], (tuple, list)) else None
        if y is not None:
            by_method.setdefault(method.get(name, name), []).append((s["tokens"], y, err, name))
    styles = series_styles(by_method)
    # series sharing a token count are spread sideways a little (log2 steps of DODGE) so none hides another
    at_x: dict[float, list[str]] = {}
    for m in sorted(by_method):
        for p in by_method[m]:
            at_x.setdefault(p[0], []).append(m)

    def dodged(m: str, x: float) -> float:
        peers = at_x[x]
        return x * 2 ** ((peers.index(m) - (len(peers) - 1) / 2) * DODGE)

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for m, pts in sorted(by_method.items()):
        pts.sort()
        colour, marker = styles[m]
        ax.errorbar([dodged(m, p[0]) for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], marker=marker,
                    color=colour, markersize=7, capsize=3, label=m, linestyle="-" if len(pts) > 1 else "none")
    for ref in lines:
        ax.axhline(ref.y, color=ref.colour, linestyle=ref.style, linewidth=1.2, label=ref.label, zorder=1)
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in by_method.values() for p in pts})
    if ticks:  # the token counts themselves, as plain numbers
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("vision tokens reaching the LLM")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    if footnote:
        ax.annotate(textwrap.fill(footnote, 150), xy=(0.0, 0.0), xycoords="axes fraction", xytext=(0, -40),
                    textcoords="offset points", va="top", ha="left", fontsize=7, color="0.25")
    return fig


def plot_results(plan: StudyPlan, rows: dict, out_md: Path, lines: Iterable[Reference] = (),
                 footnotes: tuple[str, str] = ("", "")) -> tuple[Path, Path]:
    """Write ``<report>_accuracy_vs_tokens.png`` (with the reference ``lines``) and ``<report>_ttft_vs_tokens.png``
    next to the report, each with its footnote (accuracy, TTFT)."""
    import matplotlib.pyplot as plt

    on_gpu = plan.device == "cuda"
    paths = []
    for key, ylabel, fname, refs, note in (
            ("overall", "SceneQA family mean (%)", "accuracy_vs_tokens", list(lines), footnotes[0]),
            ("ttft_ms", f"TTFT on {'GPU' if on_gpu else 'CPU'} (ms)", "ttft_vs_tokens", [], footnotes[1])):
        fig = figure(plan, rows, key, ylabel, refs, note)
        p = out_md.parent / f"{out_md.stem}_{fname}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight", pad_inches=0.15)
        plt.close(fig)
        paths.append(p)
    return paths[0], paths[1]


LINESTYLES = ("-", "--", ":", "-.")
MIN_SPAN = 10.0  # the learning-curve figure's smallest y range in accuracy points


def plot_curves(plan: StudyPlan, rows: dict, out_md: Path) -> Path | None:
    """``<report>_learning_curves.png`` next to the report: for each trained row, its last stage's validation loss
    (the first seed's curve) and its test family mean (mean ± 95% CI over seeds) at the plan's ``eval_steps``, both
    against the last stage's step. Colour and marker are the row's method series (as in the other figures); rows of
    one series differ by line style. None when no trained row has either curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    trained = sorted((n, s) for n, s in rows.items()
                     if s.get("from") is None and (((s.get("stage_curves") or [{}])[-1].get("curve")) or s.get("curve")))
    if not trained:
        return None
    method = {r.name: _series(plan, r) for r in plan.rows}
    styles = series_styles(method.get(n, n) for n, _ in trained)
    seen: dict[str, int] = {}
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for name, s in trained:
        m = method.get(name, name)
        colour, marker = styles[m]
        k = seen.get(m, 0)  # the row's rank within its series: its line style
        seen[m] = k + 1
        kw = dict(color=colour, marker=marker, linestyle=LINESTYLES[k % len(LINESTYLES)], markersize=5, label=name)
        curve = (s.get("stage_curves") or [{}])[-1].get("curve") or []
        if curve:
            loss_ax.plot([x for x, _ in curve], [v for _, v in curve], **kw)
        pts = s.get("curve") or []
        if pts:
            acc_ax.errorbar([p["step"] for p in pts], [p["family_mean"][0] for p in pts],
                            yerr=[p["family_mean"][1] or 0 for p in pts], capsize=3, **kw)
    loss_ax.set_yscale("log")  # the stage's first point (a model that has never answered) sits far above the rest
    loss_ax.yaxis.set_major_formatter(ScalarFormatter())
    loss_ax.yaxis.set_minor_formatter(ScalarFormatter())
    loss_ax.set_xlabel("step of the last training stage")
    loss_ax.set_ylabel("validation loss (first seed, log scale)")
    lo, hi = acc_ax.get_ylim()
    if hi - lo < MIN_SPAN:  # a flat curve is drawn flat, not stretched over the axes
        mid = (lo + hi) / 2
        acc_ax.set_ylim(mid - MIN_SPAN / 2, mid + MIN_SPAN / 2)
    acc_ax.set_xlabel("step of the last training stage")
    acc_ax.set_ylabel("test family mean (%), mean ± 95% CI over seeds")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    handles, labels = loss_ax.get_legend_handles_labels()
    h2, l2 = acc_ax.get_legend_handles_labels()
    for h, lab in zip(h2, l2):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    acc_ax.legend(handles, labels, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  frameon=False)
    fig.tight_layout()
    p = out_md.parent / f"{out_md.stem}_learning_curves.png"
    fig.savefig(p, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return p
