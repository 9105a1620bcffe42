"""Benchmark readers: LLaVA's eval folders (GQA, POPE, TextVQA, ScienceQA-IMG, MME, MMBench(-CN), VQAv2,
VizWiz) and SceneQA, each yielding :class:`EvalItem` and scoring with the official metric."""

from __future__ import annotations

from .base import BENCHMARKS, Benchmark, EvalItem, get_benchmark, list_benchmarks, register

_MODULES = ("gqa", "pope", "textvqa", "scienceqa", "mme", "mmbench", "vqav2", "vizwiz", "sceneqa")


def _load_all() -> None:
    import importlib

    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")


__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "get_benchmark", "list_benchmarks", "register"]
