"""Scoring rule sets. Every metric reads free-form answers by one of two sets of rules, chosen per run:

- ``llava`` (the default): the LLaVA repository's evaluation scripts as the papers report them -- the EvalAI
  answer processor for VQA (``m4c_evaluator``), ``eval_pope.py``, MME's ``calculation.py``, the GQA and
  ScienceQA conversions (``convert_gqa_for_eval.py``, ``eval_science_qa.py``); MMBench and SceneQA's option
  reading use :func:`~compactvlm.evaluate.metrics.choice.extract_option` (LLaVA scores MMBench on its server).
- ``lmms-eval``: lmms-eval 0.7.3's task utilities (``vqav2``, ``textvqa``, ``vizwiz_vqa``, ``pope``, ``mme``,
  ``gqa``, ``scienceqa_img``, ``mmbench_en_dev_static``).

docs/metrics.md lists where the two sets read the same answer differently, and why.
"""

from __future__ import annotations

from ...errors import CompactVLMError

RULES = ("llava", "lmms-eval")
DEFAULT_RULES = "llava"


def check_rules(rules: str | None) -> str:
    """The rule set's name (``None`` -> the default); a clear error for an unknown one."""
    if rules is None:
        return DEFAULT_RULES
    if rules not in RULES:
        raise CompactVLMError(f"unknown scoring rules {rules!r}", f"use one of: {', '.join(RULES)}")
    return rules
