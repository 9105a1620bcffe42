"""A training run's metrics.jsonl -> one compact JSON (config, validation passes with the blindness gauge, loss and
speed per step) for results/:  python scripts/summarize_run.py runs/recipe/stf-s1 results/recipe/train-stf-s1.json"""

import json
import statistics
import sys
from pathlib import Path

import yaml


def main(run: str, out: str) -> None:
    r = Path(run)
    rows = [json.loads(l) for l in (r / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = {}
    for x in rows:  # a resumed run logs steps again: keep the last record of each step
        if x["event"] == "train":
            train[x["step"]] = x
    steps = sorted(train)
    evals = {x["step"]: {k: v for k, v in x.items() if k not in ("event", "time")} for x in rows if x["event"] == "eval"}
    res = {"run": run, "config": yaml.safe_load((r / "train_config.yaml").read_text()),
           "finished": any(x["event"] == "end" for x in rows), "last_step": steps[-1] if steps else 0,
           "median_sec_per_step": statistics.median(train[s]["sec_per_step"] for s in steps) if steps else None,
           "median_tokens_per_sec": statistics.median(train[s]["tokens_per_sec"] for s in steps) if steps else None,
           "train_seconds": sum(train[s]["sec_per_step"] for s in steps),
           "evals": [evals[s] for s in sorted(evals)],
           "loss": [[s, round(train[s]["loss"], 4)] for s in steps],
           "command": "python scripts/summarize_run.py " + " ".join(sys.argv[1:])}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{out}: {res['last_step']} steps, finished {res['finished']}, median {res['median_sec_per_step']:.2f} s/step")


if __name__ == "__main__":
    main(*sys.argv[1:3])
