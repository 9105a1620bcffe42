"""How much a second seed narrows each evaluation-only row's CI of its family-mean difference to the reference (the
plan's precision target: half-width <= 2.0). Reads the report's JSON twice: at a commit where those rows had seed 1
only, and now (seeds 0 and 1), both from `compactvlm study report` (paired cluster bootstrap over the 1,000 test
images, 1,000 draws, averaged over the seeds both have). Half-width: (upper - lower) / 2. Also the three-seed width
that a variance model a + b/k fitted to the median one- and two-seed widths projects (a projection, not a measurement).
`python results/bench/halfwidth_two_seeds.py [ONE_SEED_COMMIT]` from the repo root (default ff89a49^, the last
report before any seed-0 evaluation-only row)."""
import json, statistics, subprocess, sys

old_commit = sys.argv[1] if len(sys.argv) > 1 else "ff89a49^"
old = json.loads(subprocess.run(["git", "show", f"{old_commit}:docs/results_v2_900.json"], capture_output=True,
                                text=True, check=True).stdout)
new = json.load(open("docs/results_v2_900.json"))


def width(r):
    b = r.get("bootstrap") or {}
    return (b["delta"][2] - b["delta"][1]) / 2 if b.get("delta") else None, b.get("seeds")


print(f"{'row':20s} {'one seed':>9s} {'two seeds':>10s} {'ratio':>6s}")
ratios = []
for name, r in new.items():
    if not r.get("from") or name not in old:
        continue
    (w1, s1), (w2, s2) = width(old[name]), width(r)
    if w1 is None or w2 is None or len(s1 or []) != 1 or len(s2 or []) != 2:
        continue
    ratios.append(w2 / w1)
    print(f"{name:20s} {w1:9.2f} {w2:10.2f} {w2 / w1:6.2f}  seeds {s1} -> {s2}{'  (target met)' if w2 <= 2.0 else ''}")
m = statistics.median(ratios)
a = 2 * m * m - 1  # var(k) / var(1) = a + (1 - a) / k  with var(2) / var(1) = m^2
print(f"{len(ratios)} rows: two-seed / one-seed half-width median {m:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
      f"a + b/k through it projects three seeds at {((a + (1 - a) / 3) ** 0.5):.2f} of the one-seed width")
print(f"$ python results/bench/halfwidth_two_seeds.py {old_commit}")
