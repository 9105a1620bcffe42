"""One paired comparison on demand: row A against row B (or against A's own blind control), per SceneQA family and
on the family mean, with the test-image cluster bootstrap the report uses (``evaluate.bootstrap``). Beside each
side's scores, its own blind control's (the plan's first control, where its result file carries its answers) and
the test split's chance and majority baselines: an accuracy means little without them. Reads result files only; no
model is loaded. The study notes' per-family deltas come from here (``compactvlm study compare``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CompactVLMError
from .controls import baselines_percent, load_baselines
from .plan import StudyPlan, result_path


def parse_side(text: str, seed: int) -> tuple[str, int]:
    """``ROW`` or ``ROW@SEED`` -> (row, seed)."""
    name, at, s = text.partition("@")
    if not at:
        return name, seed
    try:
        return name, int(s)
    except ValueError:
        raise CompactVLMError(f"{text!r}: the seed after '@' must be an integer", "write e.g. stf-k2e1@1") from None


def read_result(p: Path) -> dict:
    """A study result file (``results/<plan>/<row>/seed<N>.json``), parsed; a clear error where it is not valid JSON
    or carries no answers (``predictions``)."""
    try:
        res = json.loads(Path(p).read_text())
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{p} is not valid JSON ({e})",
                              "rerun its row with `study run --force`, or pass a result file as `study run` wrote it"
                              ) from None
    if not isinstance(res, dict) or not isinstance(res.get("predictions"), dict):
        raise CompactVLMError(f"{p} holds no predictions (the answers every study result file carries)",
                              "pass a result file of `compactvlm study run`, or rerun its row with `--force`")
    return res


def _result(plan: StudyPlan, row: str, seed: int, plan_file: str) -> dict:
    plan.row(row)  # an unknown row fails with the plan's row names
    p = result_path(plan, row, seed)
    if not p.is_file():
        raise CompactVLMError(f"no result for `{row}` seed {seed} ({p} not found)",
                              f"run it first: compactvlm study run --plan {plan_file} --rows {row} --seeds {seed}")
    return read_result(p)


def compare_pair(plan: StudyPlan, plan_file: str, a: str, seed_a: int, b: str, seed_b: int,
                 plan_b: StudyPlan | None = None, plan_b_file: str | None = None, n: int | None = None) -> dict:
    """A's answers minus B's on the same test questions: ``evaluate.bootstrap.paired_family_deltas``'s dict plus
    ``a``/``b`` labels. ``b`` is a row of ``plan_b`` (default: ``plan``) or, when it names one of the plan's blind
    controls (e.g. ``shuffled``), A's own answers with the images replaced."""
    from ..evaluate.benchmarks.base import read_jsonl
    from ..evaluate.bootstrap import paired_family_deltas

    other_plan = plan_b or plan
    if other_plan.data != plan.data:
        raise CompactVLMError(f"the two plans answer different SceneQA builds ({plan.data.dir} and "
                              f"{other_plan.data.dir}, or another build setting): a paired comparison needs the same "
                              "questions", "compare rows of plans that share `data`")
    answers = Path(plan.data.dir) / "test_answers.jsonl"
    if not answers.is_file():
        raise CompactVLMError(f"{answers} not found: the plan's SceneQA build is not on disk",
                              f"build it (any row of `compactvlm study run --plan {plan_file}` does, first)")
    ra = _result(plan, a, seed_a, plan_file)
    controls = ra.get("control_predictions") or {}
    rb = None
    if plan_b is None and b in plan.controls:
        if not isinstance(controls.get(b), dict):
            raise CompactVLMError(f"the result of `{a}` seed {seed_a} holds no `{b}` control answers",
                                  "rerun the row with `study run --force`")
        pb, label_b = controls[b], f"{a}@{seed_a} ({b} images)"
    else:
        rb = _result(other_plan, b, seed_b, plan_b_file or plan_file)
        pb = rb["predictions"]
        label_b = f"{b}@{seed_b}" + (f" ({other_plan.name})" if plan_b is not None else "")
    rows = read_jsonl(answers)
    rows = rows[: plan.eval_limit] if plan.eval_limit else rows  # the questions the plan's rows answered
    res = paired_family_deltas(rows, ra["predictions"], pb, n=n or (plan.bootstrap if plan.bootstrap > 0 else 1000))
    res["a"], res["b"] = f"{a}@{seed_a}", label_b
    ctl = plan.controls[0] if plan.controls else None
    res["control"] = ctl
    # each side's own blind control; none where B is A's control itself (B's column is that)
    res["controls"] = {"a": _control_scores(rows, ra, ctl) if rb is not None else None,
                       "b": _control_scores(rows, rb, ctl) if rb is not None else None}
    base, _ = load_baselines(plan)
    res["baselines"] = {k: list(v) for k, v in baselines_percent(base).items()} if base else None
    return res


def _control_scores(rows: list[dict], result: dict, control: str | None) -> dict[str, float] | None:
    """Per family (and ``family_mean``) the scores of a result's ``control`` answers, or None where it has none."""
    from ..evaluate.bootstrap import family_headlines

    preds = (result.get("control_predictions") or {}).get(control) if control else None
    if not isinstance(preds, dict) or any(str(r["question_id"]) not in preds for r in rows):
        return None
    return family_headlines(rows, [str(preds[str(r["question_id"])]) for r in rows])


def format_pair(res: dict) -> str:
    """The comparison as a Markdown table: family, A (and its blind control), B (and its), A − B [CI], chance /
    majority; a column only where there is something to show."""
    ctl, ca, cb, base = res.get("control"), (res.get("controls") or {}).get("a"), \
        (res.get("controls") or {}).get("b"), res.get("baselines")
    head = ["family", res["a"]] + ([f"{ctl}"] if ca else []) + [res["b"]] + ([f"{ctl}"] if cb else []) + \
        [f"a − b [{100 * res['level']:.0f}% CI]"] + (["chance / majority"] if base else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for fam, v in list(res["families"].items()) + [("family mean", res["family_mean"])]:
        key = "family_mean" if fam == "family mean" else fam
        p, lo, hi = v["delta"]
        cells = [fam, f"{v['a']:.1f}"] + ([_cell(ca, key)] if ca else []) + [f"{v['b']:.1f}"] + \
            ([_cell(cb, key)] if cb else []) + [f"{p:+.1f} [{lo:+.1f}, {hi:+.1f}]"]
        if base:
            chance, major = base.get(key, (None, None))
            cells.append(" / ".join("–" if x is None else f"{x:.1f}" for x in (chance, major)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{res['n']} bootstrap draws over {res['clusters']} test images (paired: the same questions)"
                 + (f"; `{ctl}`: the same row's answers with the images {ctl} across questions (its blind control)"
                    if ca or cb else ""))
    return "\n".join(lines)


def _cell(scores: dict[str, float], key: str) -> str:
    return f"{scores[key]:.1f}" if key in scores else "–"
