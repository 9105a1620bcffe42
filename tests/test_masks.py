"""Mask sources for the ``objects`` compressor: every source covers the image (with background where it finds
objects) and fails clearly on bad input. Tiny random-config models only (DINOv2 width 32, 4 blocks, patch 4,
32 px -> 8x8 grid; a tiny Deformable DETR and a tiny SAM saved to and loaded from a temporary folder)."""

from __future__ import annotations

import pytest
import torch

from compactvlm.compressors import create_compressor
from compactvlm.compressors.masks import (
    as_bool_masks, create_mask_source, limit_and_cover, patch_coverage, with_background,
)
from compactvlm.compressors.masks.detector_sam import box_iou, greedy_nms
from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.errors import CompactVLMError
from compactvlm.testing import tiny_dinov2
from compactvlm.registry import MASK_SOURCES

GRID = (8, 8)
PIX = (32, 32)


@pytest.fixture(scope="module")
def encoder() -> HFVisionEncoder:
    return HFVisionEncoder(tiny_dinov2()).requires_grad_(False)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def feats_of(encoder, pixels, layers=(-2, -1), **extra):
    with torch.no_grad():
        f = encoder(pixels, layers=list(layers))
    f.extra_state.update(pixel_values=pixels, encoder=encoder, **extra)
    return f


def assert_covers(masks: list[torch.Tensor], max_masks: int, sizes) -> None:
    for m in masks:
        assert m.dtype == torch.bool and m.ndim == 3
        assert 1 <= m.shape[0] <= max_masks
        assert tuple(m.shape[-2:]) in sizes
        assert m.flatten(1).any(dim=1).all(), "no empty masks"
        assert m.any(dim=0).all(), "the masks must cover the image"


def test_the_three_sources_are_registered():
    assert {"unsupervised", "given", "detector_sam"} <= set(MASK_SOURCES.names())
    with pytest.raises(CompactVLMError, match="did you mean"):
        create_mask_source("unsupervized")


# ---- shared helpers ---------------------------------------------------------------------------------
def test_with_background_adds_the_complement_only_when_needed():
    objs = torch.zeros(2, 4, 4, dtype=torch.bool)
    objs[0, :2] = True
    objs[1, :, :1] = True
    out = with_background(objs)
    assert out.shape[0] == 3 and torch.equal(out[2], ~(objs[0] | objs[1]))
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    assert torch.equal(with_background(full), full)
    assert with_background(torch.zeros(0, 4, 4, dtype=torch.bool), (4, 4)).all()


def test_limit_and_cover_keeps_the_largest_objects_and_recomputes_background():
    objs = torch.zeros(4, 6, 6, dtype=torch.bool)
    objs[0, :1, :1] = True  # area 1
    objs[1, :3] = True  # area 18
    objs[2, 3:, :2] = True  # area 6
    objs[3, 5, 5] = True  # area 1
    out = limit_and_cover(objs, 3, (6, 6))
    assert out.shape[0] == 3
    assert torch.equal(out[0], objs[1]) and torch.equal(out[1], objs[2])
    assert torch.equal(out[2], ~(objs[1] | objs[2]))
    assert limit_and_cover(objs, 1, (6, 6)).all()
    kept = limit_and_cover(objs[[3, 1]], 3, (6, 6))  # fits: source order kept
    assert torch.equal(kept[:2], objs[[3, 1]]) and torch.equal(kept[2], ~(objs[3] | objs[1]))


def test_as_bool_masks_rejects_bad_input():
    with pytest.raises(CompactVLMError, match="empty"):
        as_bool_masks(torch.zeros(0, 4, 4, dtype=torch.bool), "x")
    with pytest.raises(CompactVLMError, match="binary"):
        as_bool_masks(torch.full((1, 4, 4), 0.5), "x")
    with pytest.raises(CompactVLMError, match=r"mask\(s\) \[1\] are empty"):
        as_bool_masks(torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]), "x")
    with pytest.raises(CompactVLMError, match=r"\(K, H, W\)"):
        as_bool_masks(torch.ones(1, 1, 4, 4), "x")
    assert as_bool_masks(torch.ones(4, 4, dtype=torch.uint8), "x").shape == (1, 4, 4)


def test_patch_coverage_is_the_covered_fraction_per_patch():
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[0, :2, :4] = True  # half of patch (0, 0)
    m[0, 4:8, 4:8] = True  # all of patch (1, 1)
    cov = patch_coverage(m, GRID, 4, PIX)
    assert cov.shape == (1, 8, 8)
    assert cov[0, 0, 0] == 0.5 and cov[0, 1, 1] == 1.0 and cov.sum() == 1.5
    assert torch.equal(patch_coverage(m[:, :8, :8], GRID, 4), m[:, :8, :8].float())  # patch resolution
    with pytest.raises(CompactVLMError, match="match neither"):
        patch_coverage(torch.ones(1, 30, 30, dtype=torch.bool), GRID, 4, PIX)


# ---- unsupervised -----------------------------------------------------------------------------------
def test_unsupervised_partitions_the_image_deterministically(encoder, pixels):
    src = create_mask_source("unsupervised")
    f = feats_of(encoder, pixels)
    a, b = src(f, 6), src(f, 6)
    assert_covers(a, 6, {GRID})
    for ma, mb in zip(a, b):
        assert torch.equal(ma, mb)
        assert ma.shape[0] == 6
        assert torch.equal(ma.sum(dim=0), torch.ones(GRID, dtype=torch.long)), "segments must not overlap"
    assert src(f, 1)[0].shape == (1, *GRID)


def test_unsupervised_fails_clearly(encoder, pixels):
    src = create_mask_source("unsupervised")
    with pytest.raises(CompactVLMError, match="max_masks"):
        src(feats_of(encoder, pixels), 0)
    with pytest.raises(CompactVLMError, match="needs encoder block"):
        src(feats_of(encoder, pixels, layers=(-1,)), 4)
    with pytest.raises(CompactVLMError, match="linkage"):
        create_mask_source("unsupervised", linkage="median")


# ---- given ------------------------------------------------------------------------------------------
def test_given_adds_background_and_accepts_both_resolutions(encoder, pixels):
    src = create_mask_source("given")
    pix = torch.zeros(2, 32, 32, dtype=torch.bool)
    pix[0, 5:20, 3:17] = True
    pix[1, :, 16:] = True
    patch = torch.zeros(1, 8, 8, dtype=torch.bool)
    patch[0, 2:4, 2:4] = True
    f = feats_of(encoder, pixels, masks=[pix, patch])
    out = src(f, 4)
    assert_covers(out, 4, {PIX, GRID})
    assert out[0].shape == (3, 32, 32) and torch.equal(out[0][2], ~(pix[0] | pix[1]))
    assert out[1].shape == (2, 8, 8) and torch.equal(out[1][1], ~patch[0])


@pytest.mark.parametrize("masks, match", [
    (None, "found no masks"),
    ([torch.ones(1, 32, 32, dtype=torch.bool)], "one entry per image"),
    ([torch.zeros(0, 32, 32, dtype=torch.bool)] * 2, "empty"),
    ([torch.ones(1, 30, 30, dtype=torch.bool)] * 2, "has size"),
    ([torch.zeros(1, 32, 32, dtype=torch.bool)] * 2, "are empty"),
])
def test_given_fails_clearly_on_bad_masks(encoder, pixels, masks, match):
    f = feats_of(encoder, pixels)
    if masks is not None:
        f.extra_state["masks"] = masks
    with pytest.raises(CompactVLMError, match=match):
        create_mask_source("given")(f, 4)


# ---- detector_sam -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A tiny random Deformable DETR and SAM written with save_pretrained (no weights exist offline)."""
    from transformers import (
        DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig, SamConfig, SamMaskDecoderConfig,
        SamModel, SamPromptEncoderConfig, SamVisionConfig,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("detsam")
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                            out_features=["stage2", "stage3", "stage4"])
    det_cfg = DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False, d_model=32, encoder_layers=1,
                                   decoder_layers=2, encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
                                   decoder_attention_heads=2, num_queries=12, num_labels=2, num_feature_levels=3,
                                   encoder_n_points=2, decoder_n_points=2)
    DeformableDetrForObjectDetection(det_cfg).save_pretrained(root / "det")
    sam_cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=16, output_channels=8, num_hidden_layers=1, num_attention_heads=2,
                                      image_size=64, patch_size=8, mlp_dim=16, global_attn_indexes=[0],
                                      window_size=2, num_pos_feats=4).to_dict(),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=8, image_size=64, patch_size=8,
                                                     mask_input_channels=4, num_point_embeddings=4).to_dict(),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                 mlp_dim=16, iou_head_hidden_dim=8).to_dict(),
    )
    SamModel(sam_cfg).save_pretrained(root / "sam")
    return root / "det", root / "sam"


def test_detector_sam_loads_local_checkpoints_and_covers_the_image(encoder, pixels, tiny_checkpoints):
    det, sam = tiny_checkpoints
    src = create_mask_source("detector_sam", detector_path=str(det), sam_path=str(sam), score_threshold=0.0,
                             nms_iou=None, detector_size=64)
    f = feats_of(encoder, pixels)
    boxes = src.boxes(src._rgb(f), 3)
    assert [b.shape for b in boxes] == [(3, 4), (3, 4)], "threshold 0 keeps the top max_masks - 1 boxes"
    assert all((b[:, 2:] > b[:, :2]).all() and (b >= 0).all() and (b <= 32).all() for b in boxes)
    seg = src.segment(src._rgb(f)[0], boxes[0])
    assert seg.shape == (3, 32, 32) and seg.dtype == torch.bool
    out = src(f, 4)
    assert_covers(out, 4, {PIX})
    for m in out:
        objects_union = m[:-1].any(dim=0)
        assert torch.equal(m[-1], ~objects_union) or objects_union.all() or m.shape[0] == 1
    with torch.inference_mode():  # end to end through the compressor
        comp = create_compressor("objects", encoder.info, 24, mask_source="detector_sam", detector_path=str(det),
                                 sam_path=str(sam), detector_threshold=0.0, max_objects=4,
                                 mask_options={"detector_size": 64})
        assert comp(f).shape == (2, 1 + 4 + 4, 24)


def test_detector_sam_fails_clearly(encoder, pixels, tiny_checkpoints, tmp_path):
    det, sam = tiny_checkpoints
    f = feats_of(encoder, pixels)
    with pytest.raises(CompactVLMError, match="needs a local Deformable DETR"):
        create_mask_source("detector_sam", sam_path=str(sam))(f, 4)
    with pytest.raises(CompactVLMError, match="no config.json"):
        create_mask_source("detector_sam", detector_path=str(tmp_path), sam_path=str(sam))(f, 4)
    src = create_mask_source("detector_sam", detector_path=str(det), sam_path=str(sam), score_threshold=0.0)
    f.extra_state["pixel_values"] = pixels[:, :, :28, :28]
    with pytest.raises(CompactVLMError, match="expected"):
        src(f, 4)
    del f.extra_state["pixel_values"]
    with pytest.raises(CompactVLMError, match="pixel_values"):
        src(f, 4)
    with pytest.raises(CompactVLMError, match="only apply to mask_source=detector_sam"):
        create_compressor("objects", encoder.info, 24, detector_path=str(det))


def test_box_iou_and_greedy_nms():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    iou = box_iou(boxes, boxes)
    assert torch.allclose(iou.diagonal(), torch.ones(3)) and iou[0, 2] == 0
    assert abs(float(iou[0, 1]) - 81 / 100) < 1e-6
    assert greedy_nms(boxes, 0.5).tolist() == [0, 2]
    assert greedy_nms(boxes, 0.9).tolist() == [0, 1, 2]
    assert greedy_nms(boxes, 0.9, limit=2).tolist() == [0, 1]
