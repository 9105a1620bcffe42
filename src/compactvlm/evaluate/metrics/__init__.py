"""Official metric behaviour of the benchmarks LLaVA-style papers report, under two scoring rule sets
(``rules``: ``llava``, the default, or ``lmms-eval``; see :mod:`.rules` and docs/metrics.md). Percentages
everywhere except MME, which is a sum of scores."""

from .choice import circular_accuracy, extract_option, mcq_letter, mmbench_option, option_accuracy, sqa_option
from .gqa import exact_match, gqa_clean, gqa_score
from .mme import COGNITION, PERCEPTION, mme_score, mme_yes_no
from .normalize import normalize_answer, vqa_eval_normalize
from .pope import pope_metrics, pope_score, pope_yes_no
from .rules import DEFAULT_RULES, RULES, check_rules
from .vqa import vqa_accuracy, vqa_score

__all__ = [
    "COGNITION", "DEFAULT_RULES", "PERCEPTION", "RULES", "check_rules", "circular_accuracy", "exact_match",
    "extract_option", "gqa_clean", "gqa_score", "mcq_letter", "mme_score", "mme_yes_no", "mmbench_option",
    "normalize_answer", "option_accuracy", "pope_metrics", "pope_score", "pope_yes_no", "sqa_option",
    "vqa_accuracy", "vqa_eval_normalize", "vqa_score",
]
