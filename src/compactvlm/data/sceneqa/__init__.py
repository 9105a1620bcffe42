"""SceneQA: a built-in VQA benchmark composed from real image content (Fashion-MNIST items, photo
backgrounds, coloured shapes, rendered words), whose question families mirror the skills and metrics of
POPE, VQAv2, GQA, TextVQA, MMBench / ScienceQA-IMG, MME and VizWiz. Deterministic by seed.

    from compactvlm.data.sceneqa import build_sceneqa
    manifest = build_sceneqa("data/sceneqa", seed=0, sizes={"caption": 2000, "train": 5000, "val": 250, "test": 1000})

Score with ``compactvlm.evaluate.evaluate("sceneqa", "data/sceneqa", answer_fn, out_dir)``; object masks for
the ``given`` mask source: ``object_masks("data/sceneqa", "images/test/000007.jpg")``.
"""

from .build import DEFAULT_SIZES, SPLITS, build_sceneqa
from .masks import object_masks, scene_of
from .vocab import FAMILIES, FAMILY_NAMES

__all__ = ["DEFAULT_SIZES", "FAMILIES", "FAMILY_NAMES", "SPLITS", "build_sceneqa", "object_masks", "scene_of"]
