"""How the CI half-width of a row's difference to the reference shrinks with training seeds (issue 21, item 2: is
the 1,000-image test split large enough for a half-width <= 2.0 once every row has 3 seeds?). For each row that has
two seeds in common with the reference: the paired cluster bootstrap (`compactvlm.evaluate.bootstrap.bootstrap_sceneqa`,
the study report's, 1000 draws) at each seed alone and averaged over both. Then a projection to 3 seeds, labelled as
one: the variance of the mean difference modelled as a + b/k (a: which images were asked, shared by every seed; b:
seed-to-seed noise, averaging out), fitted to the mean one-seed and the two-seed half-width.
`python results/bench/halfwidth_seeds.py DATA_DIR RESULTS_DIR REFERENCE ROW [ROW ...]` from the repo root."""
import functools
import json
import sys
from pathlib import Path

from compactvlm.evaluate.benchmarks.base import read_jsonl
from compactvlm.evaluate.bootstrap import bootstrap_sceneqa

data, results, ref = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
answers = read_jsonl(data / "test_answers.jsonl")


@functools.cache  # the reference's files are read once, not once per row
def preds(row: str, seed: int) -> dict:
    return json.loads((results / row / f"seed{seed}.json").read_text())["predictions"]


for row in sys.argv[4:]:
    seeds = sorted(int(p.stem[4:]) for p in (results / row).glob("seed*.json")
                   if (results / ref / p.name).exists())[:2]
    if len(seeds) < 2:
        print(f"{row}: {len(seeds)} seed(s) in common with {ref}; needs 2")
        continue
    hw = {}
    for use in ([seeds[0]], [seeds[1]], seeds):
        b = bootstrap_sceneqa(answers, [preds(row, s) for s in use], [preds(ref, s) for s in use], n=1000)
        d = b["delta"]
        hw[tuple(use)] = (d[2] - d[1]) / 2
        print(f"{row} - {ref}, seeds {use}: {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}], half-width {hw[tuple(use)]:.2f}")
    one, two = (hw[(seeds[0],)] ** 2 + hw[(seeds[1],)] ** 2) / 2, hw[tuple(seeds)] ** 2
    b_ = 2 * (one - two)
    a_ = one - b_
    three = (a_ + b_ / 3) ** 0.5 if a_ + b_ / 3 > 0 else float("nan")
    print(f"{row}: projection (a + b/k fitted to 1 and 2 seeds, not a measurement): 3 seeds ~{three:.2f}, "
          f"i.e. x{three / one ** 0.5:.2f} the one-seed half-width")
