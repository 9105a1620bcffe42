"""The study: the papers' experiments on SceneQA, one result JSON per (row, seed), and the report built from them.

A *plan* (``configs/study/*.yaml``) names the SceneQA build, one training recipe shared by every row (one stage or
several, e.g. captions then instructions; ``plan``), the seeds and the rows. A row is either trained (``compressor`` + ``params``) or evaluation-only on another row's checkpoint
(``from``), optionally with a test-time ``budget`` (Mask-LLaVA's object tokens) or a training-free ``reduce``
(random / avgpool / visionzip / fastv). For each (row, seed) ``run_row`` trains (resuming an interrupted run),
evaluates on the SceneQA test split (resuming an interrupted evaluation) with real images and with each blind
control (images shuffled across questions), evaluates the learning-curve checkpoints (``eval_steps``), measures TTFT (encode + compress +
prefill + first-token logits, median of repeats, batch 1) and counts FLOPs of that same forward with
``torch.utils.flop_counter.FlopCounterMode`` (``efficiency.flops.flop_counter``; vision = encoder + compressor;
LLM = the rest), then writes
``results/<plan>/<row>/seed<S>.json``. ``write_report`` aggregates those files only: mean and 95% CI (Student t)
over seeds per question family, PRT against the plan's reference row, paired test-image bootstraps (with the CI
half-width against the plan's target), blind controls, validation-loss curves with their last-third slope (a
comparison of rows that have not flattened is flagged), plots of accuracy and TTFT versus tokens. Nothing in the
report is typed by hand.

Modules: ``plan`` (schema, paths), ``run`` (one (row, seed)), ``curve`` (learning-curve snapshots and their
evaluation), ``progress`` (queue position and ETA of ``study run``), ``status`` (each (row, seed)'s state, from files), ``stats`` (result files, CIs, bootstraps,
comparisons), ``convergence`` (last-third slopes), ``controls`` (chance, blind controls, machine), ``report``
(Markdown), ``plots`` (figures), ``verdicts`` (the claims table's rule), ``export`` (shipped weights).

    compactvlm study run --plan configs/study/sceneqa_cpu.yaml [--rows stf-k2e1,full-mlp2x] [--seeds 0,1,2]
    compactvlm study report --plan configs/study/sceneqa_cpu.yaml
"""

from __future__ import annotations

from .export import export_rows
from .plan import StudyData, StudyPlan, StudyRow, checkpoint_dir, load_plan, result_path, stage_dirs
from .report import write_report
from .run import _train_stats, check_stages, data_build_lock, ensure_data, measure_cost, mix_path, run_row, train_row
from .stats import attach_predictions, collect, compare, mean_ci, summarize

__all__ = ["StudyData", "StudyPlan", "StudyRow", "attach_predictions", "check_stages", "checkpoint_dir", "collect",
           "compare", "data_build_lock", "ensure_data", "export_rows", "load_plan", "mean_ci", "measure_cost",
           "mix_path", "result_path", "run_row", "stage_dirs", "summarize", "train_row", "write_report"]
