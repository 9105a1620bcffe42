"""Setup shared by the reduction tests (test_reduction.py, test_reduction_fastv.py, test_reduction_more.py): the
tiny full-token model (DINOv2 width 32, 4 blocks, patch 4, 32 px -> 8x8 = 64 patch tokens, ``mlp2x_gelu``, a
4-layer Llama so FastV's K < L), two images, a left-padded prompt batch, and ``model.reduction`` reset around
every test.

    model, images, no_reduction = reduction_fixtures(sharp=True)   # module-level in a test file
"""

from __future__ import annotations

import pytest

from compactvlm.testing import random_images, sharpen, tiny_vlm

N = 64  # 8 x 8 patch tokens
L = 4  # LLM layers
QUESTIONS = ["what is in the image", "how many red shoe are there on the left"]  # different lengths: left padding


def reduction_model(sharp: bool = True):
    """The tiny full-token model; ``sharp``: larger random LLM weights (std 0.3), so attention is far from uniform
    and answers differ by input."""
    m = tiny_vlm("mlp2x_gelu", llm_layers=L)
    if sharp:
        sharpen(m.llm)
    return m.eval()


def reduction_fixtures(sharp: bool = True):
    """(model, images, no_reduction) fixtures for a test module: assign them to those three names."""

    @pytest.fixture(scope="module")
    def model():
        return reduction_model(sharp)

    @pytest.fixture(scope="module")
    def images():
        return random_images(2, seed=3)

    @pytest.fixture(autouse=True)
    def no_reduction(model):
        model.reduction = None
        yield
        model.reduction = None

    return model, images, no_reduction


def batch(model, images, questions=QUESTIONS):
    """(ids, mask) of the questions, left-padded, and the images' pixels."""
    ids, mask = model.pad_left([model.prompt_ids(q) for q in questions])
    return ids, mask, model.processor(images)
