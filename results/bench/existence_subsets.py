"""Existence (POPE-style) questions of a study's results by subset (random / popular / adversarial negatives): the
share of "yes" answers and the accuracy per subset, with real images and with the images shuffled across questions
(the row's blind control). Reads only the result files (their stored answers) and the plan's test answers.
`python results/bench/existence_subsets.py DATA_DIR RESULT.json [RESULT.json ...]` from the repo root."""
import json
import sys
from pathlib import Path

from compactvlm.evaluate.benchmarks.base import read_jsonl

rows = [r for r in read_jsonl(Path(sys.argv[1]) / "test_answers.jsonl") if r["family"] == "existence"]
subsets = sorted({r["subset"] for r in rows})
print(f"{len(rows)} existence questions; subsets {', '.join(subsets)}; answer 'yes' "
      f"{100 * sum(r['answer'] == 'yes' for r in rows) / len(rows):.0f} %")
for f in sys.argv[2:]:
    res = json.loads(Path(f).read_text())
    cells = []
    for label, preds in (("real", res["predictions"]), ("shuffled", (res.get("control_predictions") or {}).get("shuffled"))):
        if preds is None:
            cells.append(f"{label}: none")
            continue
        said = {r["question_id"]: preds[r["question_id"]].strip().lower() for r in rows}
        yes = 100 * sum(a.startswith("yes") for a in said.values()) / len(rows)
        acc = []
        for sub in subsets:
            rs = [r for r in rows if r["subset"] == sub]
            acc.append(f"{sub} {100 * sum(said[r['question_id']].startswith(r['answer']) for r in rs) / len(rs):.1f}")
        cells.append(f"{label}: yes {yes:.0f} %, " + ", ".join(acc))
    print(f"{res['row']['name']}@{res['seed']}: " + " | ".join(cells))
