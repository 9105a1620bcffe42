"""Official metric behaviour of the benchmarks LLaVA-style papers report (each tested on hand-computed
fixtures in tests/test_metrics*.py). Percentages everywhere except MME, which is a sum of scores."""

from .choice import circular_accuracy, extract_option, option_accuracy, sqa_option
from .gqa import exact_match, gqa_clean, gqa_score
from .mme import COGNITION, PERCEPTION, mme_score, mme_yes_no
from .normalize import normalize_answer
from .pope import pope_metrics, pope_score, pope_yes_no
from .vqa import vqa_accuracy, vqa_score

__all__ = [
    "COGNITION", "PERCEPTION", "circular_accuracy", "exact_match", "extract_option", "gqa_clean", "gqa_score",
    "mme_score", "mme_yes_no", "normalize_answer", "option_accuracy", "pope_metrics", "pope_score",
    "pope_yes_no", "sqa_option", "vqa_accuracy", "vqa_score",
]
