"""Model-agnostic evaluation: benchmark readers with official metrics, a resumable harness, PRT and
reports. The model enters only as ``answer_fn(list[EvalItem]) -> list[str]``."""

from .benchmarks import EvalItem, get_benchmark, list_benchmarks
from .harness import evaluate
from .prt import collect_runs, dataset_scores, load_results, prt, prt_table
from .report import plot_accuracy_vs_tokens, results_table, write_report

__all__ = ["EvalItem", "collect_runs", "dataset_scores", "evaluate", "get_benchmark", "list_benchmarks",
           "load_results", "plot_accuracy_vs_tokens", "prt", "prt_table", "results_table", "write_report"]
