"""Is a trained row's test score still rising at the end? Its final answers (the result file) minus its answers at
an earlier learning-curve point (the evaluation folder `study run` left under the plan's runs_dir/eval, not in git),
per SceneQA family, with the report's paired test-image bootstrap.
`python results/bench/curve_last_step.py PLAN STEP ROW@SEED [ROW@SEED ...]` from the repo root, on the machine that
ran the rows."""
import sys
from pathlib import Path
from compactvlm.evaluate.benchmarks.base import read_jsonl
from compactvlm.evaluate.bootstrap import paired_family_deltas
from compactvlm.evaluate.harness import PREDICTIONS, load_predictions
from compactvlm.study import load_plan
from compactvlm.study.pairwise import parse_side, read_result

plan = load_plan(sys.argv[1]); step = int(sys.argv[2])
rows = read_jsonl(Path(plan.data.dir) / "test_answers.jsonl")
rows = rows[: plan.eval_limit] if plan.eval_limit else rows  # the questions the plan's rows answered
for side in sys.argv[3:]:
    row, seed = parse_side(side, plan.seeds[0])
    result = Path(plan.results_dir) / row / f"seed{seed}.json"
    if not result.is_file():
        sys.exit(f"{row} seed {seed}: no result file {result} (a row of the plan, run to its end?)")
    final = read_result(result)["predictions"]
    folders = sorted((Path(plan.runs_dir) / "eval" / row).glob(f"s{seed}.step-{step:06d}*"))
    if not folders or not (folders[0] / PREDICTIONS).is_file():
        sys.exit(f"{row} seed {seed}: no answers at step {step} under {Path(plan.runs_dir) / 'eval' / row}")
    res = paired_family_deltas(rows, final, load_predictions(folders[0] / PREDICTIONS), n=plan.bootstrap or 1000)
    p, lo, hi = res["family_mean"]["delta"]
    fams = ", ".join(f"{f} {v['delta'][0]:+.1f} [{v['delta'][1]:+.1f}, {v['delta'][2]:+.1f}]"
                     for f, v in res["families"].items() if f in ("attribute", "unanswerable", "existence"))
    print(f"{row}@{seed}: final {res['family_mean']['a']:.1f} - step {step} {res['family_mean']['b']:.1f} = "
          f"{p:+.1f} [{lo:+.1f}, {hi:+.1f}]; {fams}")
