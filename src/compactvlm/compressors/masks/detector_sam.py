"""``detector_sam`` mask source: Deformable-DETR boxes prompt SAM, plus a background mask (Mask-LLaVA Fig. 2).

Paper: Jahagirdar et al., "When LLaVA Meets Objects: Token Composition for Vision-Language-Models": an
objectness detector (Deformable DETR) finds boxes, SAM turns each box into a mask, and a background mask is
added. Only the summary of the paper is available, so these choices are ours (all options):
- boxes: per query the highest class probability (sigmoid, as Deformable DETR is trained with focal loss)
  is its score; queries scoring >= ``score_threshold`` are kept in descending score order, near-duplicates
  removed by greedy box NMS at IoU ``nms_iou``, and at most ``max_masks - 1`` kept (one slot for background);
- masks: SAM with one box prompt per object, ``multimask_output=False``, logits > ``mask_threshold``;
  empty masks are dropped; background = complement of the union of the object masks, added when non-empty;
- preprocessing is done in torch (the transformers image processors need torchvision, which is not a
  dependency): the model's normalised ``pixel_values`` are mapped back to [0, 1] with the encoder's
  mean/std, then resized/normalised as the checkpoints' processors do: detector shortest edge
  ``detector_size`` (longest <= ``detector_max_size``); SAM longest edge = its ``image_size`` (1024) and
  zero padding to a square; SAM's low-res mask logits are upsampled to the padded square, cropped and
  resized to the input image. Mean/std are read from each folder's ``preprocessor_config.json`` when
  present (ImageNet's otherwise).
Weights are never downloaded: ``detector_path`` / ``sam_path`` are local folders written by
``save_pretrained`` (e.g. SenseTime/deformable-detr, facebook/sam-vit-base); models can also be passed in
directly (``detector=``, ``sam=``). They load lazily on first use and are not part of the compressor's state.
Masks are returned at pixel resolution of ``extra_state["pixel_values"]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...encoders.base import VisionFeatures
from ...encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD, norm_stats
from ...errors import CompactVLMError
from ...registry import MASK_SOURCES
from . import MaskSource, check_max_masks, limit_and_cover

def _stats(path: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return norm_stats(path)  # the folder's preprocessor_config.json, ImageNet's where there is none


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes a (N, 4) and b (M, 4): (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def greedy_nms(boxes: torch.Tensor, iou: float, limit: int | None = None) -> torch.Tensor:
    """Indices of boxes (already sorted by score) kept by greedy NMS, at most ``limit``."""
    keep: list[int] = []
    ious = box_iou(boxes, boxes).tolist()
    for i in range(boxes.shape[0]):
        if limit is not None and len(keep) >= limit:
            break
        if all(ious[i][j] <= iou for j in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


@MASK_SOURCES.register("detector_sam")
class DetectorSAMMasks(MaskSource):
    reads_pixels = True  # the detector and SAM run on the image itself

    def __init__(self, detector_path: str | None = None, sam_path: str | None = None, detector=None, sam=None,
                 score_threshold: float = 0.3, nms_iou: float | None = 0.7, detector_size: int = 800,
                 detector_max_size: int = 1333, mask_threshold: float = 0.0,
                 image_mean=None, image_std=None):
        self.detector_path = detector_path
        self.sam_path = sam_path
        self._detector = detector
        self._sam = sam
        self.score_threshold = float(score_threshold)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.detector_size = int(detector_size)
        self.detector_max_size = int(detector_max_size)
        self.mask_threshold = float(mask_threshold)
        self.image_mean = image_mean  # of the model's pixel_values; default: the encoder's
        self.image_std = image_std
        self._det_stats = _stats(Path(detector_path) if detector_path else None)
        self._sam_stats = _stats(Path(sam_path) if sam_path else None)

    def settings(self) -> str:
        return (f"detector_sam(det={self.detector_path or id(self._detector)},sam={self.sam_path or id(self._sam)},"
                f"thr={self.score_threshold},nms={self.nms_iou},size={self.detector_size}/{self.detector_max_size},"
                f"mask_thr={self.mask_threshold})")

    # ---- loading ------------------------------------------------------------------------------------
    @staticmethod
    def _folder(path: str | None, what: str, option: str, example: str) -> Path:
        if not path:
            raise CompactVLMError(f"mask source 'detector_sam' needs a local {what} checkpoint",
                                  f"set {option}=/path/to/folder (save_pretrained of e.g. {example}), "
                                  "or use mask_source=unsupervised")
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise CompactVLMError(f"{option}={path!r} is not a local HF checkpoint folder (no config.json)",
                                  f"point it at a folder written by save_pretrained, e.g. of {example}")
        from ...model.build import check_model_folder

        check_model_folder(p, f"{what} ({option})")  # no custom code, no pickle-only weights
        return p

    @property
    def detector(self):
        if self._detector is None:
            from transformers import DeformableDetrForObjectDetection

            p = self._folder(self.detector_path, "Deformable DETR", "detector_path", "SenseTime/deformable-detr")
            self._detector = DeformableDetrForObjectDetection.from_pretrained(p, use_safetensors=True).eval().requires_grad_(False)
        return self._detector

    @property
    def sam(self):
        if self._sam is None:
            from transformers import SamModel

            p = self._folder(self.sam_path, "SAM", "sam_path", "facebook/sam-vit-base")
            self._sam = SamModel.from_pretrained(p, use_safetensors=True).eval().requires_grad_(False)
        return self._sam

    # ---- steps ----------------------------------------------------------------------------------------
    def _rgb(self, feats: VisionFeatures) -> torch.Tensor:
        px = feats.extra_state.get("pixel_values")
        if px is None:
            raise CompactVLMError("mask source 'detector_sam' needs the image in extra_state['pixel_values']",
                                  "run it through CompactVLM.encode_images, or pass extra_state={'pixel_values': ...}")
        h, w = feats.grid
        p = feats.info.patch_size
        if px.ndim != 4 or px.shape[0] != feats.batch_size or px.shape[1] != 3 or tuple(px.shape[-2:]) != (h * p, w * p):
            raise CompactVLMError(f"extra_state['pixel_values'] has shape {tuple(px.shape)}, expected "
                                  f"({feats.batch_size}, 3, {h * p}, {w * p}) to match the features",
                                  "pass the pixel values the features were computed from")
        enc = feats.extra_state.get("encoder")
        mean = self.image_mean or getattr(enc, "image_mean", IMAGENET_MEAN)
        std = self.image_std or getattr(enc, "image_std", IMAGENET_STD)
        m = torch.tensor(mean, dtype=torch.float32, device=px.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=px.device).view(1, 3, 1, 1)
        return (px.float() * s + m).clamp(0, 1)  # (B, 3, H, W) in [0, 1]

    def boxes(self, rgb: torch.Tensor, max_boxes: int) -> list[torch.Tensor]:
        """Per image, xyxy boxes in pixels of ``rgb``, best first: list of (n_i, 4)."""
        det = self.detector
        dev = next(det.parameters()).device
        hh, ww = rgb.shape[-2:]
        scale = min(self.detector_size / min(hh, ww), self.detector_max_size / max(hh, ww))
        size = (max(1, round(hh * scale)), max(1, round(ww * scale)))
        x = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = _normalize(x, *self._det_stats).to(dev, next(det.parameters()).dtype)
        with torch.no_grad():
            out = det(pixel_values=x)
        scores = out.logits.float().sigmoid().amax(dim=-1)  # (B, Q)
        cx, cy, bw, bh = out.pred_boxes.float().unbind(-1)  # (B, Q) each, normalised
        xyxy = torch.stack([(cx - bw / 2) * ww, (cy - bh / 2) * hh, (cx + bw / 2) * ww, (cy + bh / 2) * hh], -1)
        xyxy[..., 0::2] = xyxy[..., 0::2].clamp(0, ww)
        xyxy[..., 1::2] = xyxy[..., 1::2].clamp(0, hh)
        result = []
        for s, bx in zip(scores, xyxy):
            order = torch.sort(s, descending=True, stable=True).indices
            order = order[s[order] >= self.score_threshold]
            bx = bx[order]
            bx = bx[((bx[:, 2] - bx[:, 0]) >= 1) & ((bx[:, 3] - bx[:, 1]) >= 1)]  # (n, 4), non-degenerate
            if self.nms_iou is not None and bx.shape[0]:
                bx = bx[greedy_nms(bx, self.nms_iou, max_boxes)]
            result.append(bx[:max_boxes].to(rgb.device))
        return result

    def segment(self, rgb: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """One image (3, H, W) in [0, 1] and boxes (n, 4) -> bool masks (n, H, W)."""
        hh, ww = rgb.shape[-2:]
        if boxes.shape[0] == 0:
            return torch.zeros(0, hh, ww, dtype=torch.bool, device=rgb.device)
        sam = self.sam
        dev = next(sam.parameters()).device
        side = int(sam.config.vision_config.image_size)
        scale = side / max(hh, ww)
        rh, rw = round(hh * scale), round(ww * scale)
        x = F.interpolate(rgb[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = F.pad(_normalize(x, *self._sam_stats), (0, side - rw, 0, side - rh))  # (1, 3, side, side)
        with torch.no_grad():
            out = sam(pixel_values=x.to(dev, next(sam.parameters()).dtype),
                      input_boxes=(boxes * scale)[None].to(dev, torch.float32), multimask_output=False)
        logits = out.pred_masks[0, :, 0].float()  # (n, h', w') low-res logits
        logits = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)
        logits = F.interpolate(logits[..., :rh, :rw], size=(hh, ww), mode="bilinear", align_corners=False)[0]
        return (logits > self.mask_threshold).to(rgb.device)  # (n, H, W)

    def __call__(self, feats: VisionFeatures, max_masks: int) -> list[torch.Tensor]:
        check_max_masks(max_masks)
        rgb = self._rgb(feats)
        hw = tuple(rgb.shape[-2:])
        out = []
        for img, bx in zip(rgb, self.boxes(rgb, max_masks - 1)):
            m = self.segment(img, bx)
            m = m[m.flatten(1).any(dim=1)]  # drop empty masks
            out.append(limit_and_cover(m, max_masks, hw))
        return out
