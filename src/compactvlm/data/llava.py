"""LLaVA-format conversation data for training: read, validate, tokenise, collate.

A file is a JSON list (or JSONL, one record a line) of records in LLaVA's format::

    [{"id": "000001", "image": "images/000001.png",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                        {"from": "gpt", "value": "A red circle."}]}]

``image`` is a path relative to the image root (default: the JSON file's folder; it may not escape it).
``<image>`` is expanded to the model's ``num_image_tokens()`` placeholder ids; labels are ``IGNORE_INDEX``
everywhere except the assistant answers (``model.prompting.build_training_example``). Batches are right-padded:
padding has attention 0, label ``IGNORE_INDEX`` and position ids that count only real tokens.
Records without an image (LLaVA-665K's text-only ShareGPT turns) are refused or skipped (``text_only``): a
batch mixes images and text only if every sample has exactly one image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import CompactVLMError
from ..model.prompting import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, build_training_example, to_messages
from .images import ImageProcessor, load_image


def read_llava_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a LLaVA JSON/JSONL file, with each record's structure checked."""
    p = Path(path)
    if not p.exists() and p.is_symlink():
        raise CompactVLMError(f"training data file {p} is a symlink to a missing place or a symlink loop "
                              f"({os.readlink(p)})", "point it at the LLaVA-format JSON file, or use the file's real path")
    if not p.exists():
        raise CompactVLMError(f"training data file not found: {p}",
                              "pass a LLaVA-format JSON (e.g. from `compactvlm data build sceneqa --out DIR`)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CompactVLMError(f"cannot read training data file {p}: {e.strerror or e}",
                              "check the path (a symlink loop or a folder is not a data file)") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CompactVLMError(f"{p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
                              "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)") from None
    try:
        if p.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{p} is not valid JSON: {e}", "fix the file (LLaVA format: a list of records)") from None
    if not isinstance(records, list):
        raise CompactVLMError(f"{p} must hold a JSON list of records, got {type(records).__name__}",
                              'write [{"id": ..., "image": ..., "conversations": [...]}, ...]')
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("conversations"), list) or not r["conversations"]:
            raise CompactVLMError(f"record {i} of {p} has no 'conversations' list",
                                  'each record needs "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]')
        img = r.get("image")
        if img is not None and not isinstance(img, str):
            raise CompactVLMError(f"record {i} ({r.get('id', '?')}) of {p}: 'image' must be one path string, got {img!r}",
                                  "use one image per sample")
        _check_conversation(r["conversations"], f"record {i} (id {r.get('id', '?')}) of {p}")
    return records


def _check_conversation(conv: list, where: str) -> None:
    """Roles, string values, an answer to learn from, at most one <image>: found when the file is read, not
    hours into a run when the sampler first reaches the record."""
    try:
        msgs = to_messages(conv)
    except CompactVLMError as e:
        raise CompactVLMError(f"{where}: {e.problem}", e.fix) from None
    if not any(m["role"] == "assistant" for m in msgs):
        raise CompactVLMError(f"{where}: conversation has no assistant ('gpt') turn to learn from",
                              "add a gpt answer turn, or leave the record out")
    n_img = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in msgs)
    if n_img > 1:
        raise CompactVLMError(f"{where}: conversation has {n_img} <image> placeholders", "use at most one image per sample")
    for k, m in enumerate(msgs):
        if m["role"] == "assistant" and IMAGE_PLACEHOLDER in m["content"]:
            raise CompactVLMError(f"{where}: turn {k} (an answer) contains the control text <image>",
                                  "put <image> only in a human turn; write the word differently in answers")
        found = control_tokens(m["content"])
        if found:
            raise CompactVLMError(f"{where}: turn {k} contains chat-template control text {', '.join(found)}",
                                  "remove it from the data: the chat template adds the turn markers itself")


#: chat-template control text that must not appear inside user text (it would be read as a turn marker)
CONTROL_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
                   "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>")


def control_tokens(text: str) -> list[str]:
    """The chat-template control markers (``<|im_start|>`` ...) found in ``text``; ``<image>`` is handled by the
    callers (it is the placeholder, allowed once in a question)."""
    import re

    found = {m for m in CONTROL_MARKERS if m in text}
    found |= set(re.findall(r"<\|[A-Za-z0-9_]+\|>", text))
    return sorted(found)


class LlavaDataset(Dataset):
    """Tokenised LLaVA conversations with their images as pixel tensors.

    ``num_image_tokens`` comes from the model (``CompactVLM.num_image_tokens()``), so the prompt always has as
    many placeholder positions as the compressor emits.
    """

    def __init__(self, path: str | os.PathLike, tokenizer, num_image_tokens: int, processor: ImageProcessor,
                 image_root: str | os.PathLike | None = None, system_prompt: str | None = None,
                 max_samples: int | None = None, max_length: int | None = None, text_only: str = "error",
                 check_images: bool = True, given_masks: bool = False, objects: bool = False):
        self.path = Path(path)
        self.root = Path(image_root) if image_root else self.path.parent
        self.tokenizer = tokenizer
        self.num_image_tokens = int(num_image_tokens)
        self.processor = processor
        self.system_prompt = system_prompt
        self.max_length = max_length
        records = read_llava_json(self.path)
        no_image = [r for r in records if not r.get("image")]
        if no_image:
            if text_only == "skip":
                records = [r for r in records if r.get("image")]
            else:
                ids = [str(r.get("id", "?")) for r in no_image[:5]]
                raise CompactVLMError(
                    f"{len(no_image)} record(s) of {self.path} have no image (e.g. ids {ids})",
                    "training needs one image per sample: set data.text_only=skip to leave them out",
                )
        if max_samples is not None:
            records = records[: max_samples]
        if not records:
            raise CompactVLMError(f"{self.path} has no usable samples", "check the file and data.max_samples")
        self.records = records
        self.given_masks = given_masks
        self.objects = objects
        if check_images:
            self._check_images()
        if given_masks or objects:
            self._check_masks("the grounding objective needs the objects" if objects and not given_masks else None)

    def _check_masks(self, need: str | None = None) -> None:
        """The ``given`` mask source trains on each image's own object masks: SceneQA's label maps (the only
        dataset here that has them), found from the image path (``images/<split>/<n>.jpg``)."""
        from .sceneqa.masks import scene_of

        what = need or "the 'given' mask source needs the object masks"
        for r in self.records:  # a dict lookup each: the scene files are read once (cached)
            try:
                scene_of(self.root, r["image"])
            except CompactVLMError as e:
                raise CompactVLMError(
                    f"{what} of every training image, but for {r['image']!r} of {self.path}: {e.problem}",
                    "train on a SceneQA folder (`compactvlm data build sceneqa`, which writes masks/ and "
                    "<split>_scenes.jsonl), or use " + ("objective=lm" if need else
                                                         "model.compressor_params.mask_source=unsupervised")) from None

    def _check_images(self) -> None:
        """The image-root rule of ``images.resolve_in_root`` (the same for evaluation): relative paths inside
        the root, symlinks inside it followed."""
        from .images import resolve_in_root

        root = Path(os.path.abspath(self.root))
        missing = []
        for r in self.records:
            try:
                resolve_in_root(r["image"], root, where=f" of record {r.get('id', '?')}")
            except CompactVLMError as e:
                if e.problem.startswith("image file not found") and "symlink" not in e.problem:
                    missing.append(r["image"])
                    continue
                raise CompactVLMError(f"{e.problem} (in {self.path})", e.fix) from None
        if missing:
            raise CompactVLMError(
                f"{len(missing)} of {len(self.records)} images of {self.path} are missing under {root} "
                f"(e.g. {missing[:3]})",
                "set data.image_root to the folder the image paths are relative to, or fix the paths",
            )

    def __len__(self) -> int:
        return len(self.records)

    def tokenize(self, i: int) -> tuple[list[int], list[int]]:
        r = self.records[i]
        conv = list(r["conversations"])
        text = "".join(t.get("value", "") for t in conv if isinstance(t, dict) and isinstance(t.get("value"), str))
        if IMAGE_PLACEHOLDER not in text:
            # LLaVA data without an explicit placeholder: the image goes before the first human message
            first = dict(conv[0])
            first["value"] = f"{IMAGE_PLACEHOLDER}\n{first.get('value', '')}"
            conv[0] = first
        try:
            ids, labels = build_training_example(self.tokenizer, conv, self.num_image_tokens, self.system_prompt)
        except CompactVLMError as e:
            raise CompactVLMError(f"record {i} (id {r.get('id', '?')}) of {self.path}: {e.problem}", e.fix) from None
        if self.max_length and len(ids) > self.max_length:
            img_end = max(j for j, t in enumerate(ids) if t == IMAGE_TOKEN_ID) + 1
            if img_end > self.max_length or all(l == IGNORE_INDEX for l in labels[: self.max_length]):
                raise CompactVLMError(
                    f"record {i} (id {r.get('id', '?')}) has {len(ids)} tokens; cutting it to data.max_length="
                    f"{self.max_length} would cut its image or all its answers",
                    "raise data.max_length or shorten the conversation",
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels = self.tokenize(i)
        img = load_image(self.records[i]["image"], root=self.root)
        pix = self.processor([img])[0]  # (3, S, S)
        item = {"index": i, "input_ids": ids, "labels": labels, "pixel_values": pix}
        if self.objects:  # the grounding objective's targets (train.grounding), boxes as fractions of the image
            from .sceneqa.masks import scene_objects

            item["objects"] = scene_objects(self.root, self.records[i]["image"], img.size)
        if self.given_masks:
            from .sceneqa.masks import object_masks

            s = pix.shape[-1]
            item["masks"] = torch.from_numpy(object_masks(self.root, self.records[i]["image"], size=(s, s))[0])  # (K, S, S)
        return item


def collate_llava(items: Sequence[dict[str, Any]], pad_id: int, pad_to_multiple_of: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Right-pad a list of samples: input_ids / attention_mask / labels / position_ids (B, T), pixel_values
    (B, 3, S, S), index (B,) (the samples' dataset indices, used by the feature cache), and masks (a list of B
    object-mask tensors) when the dataset supplies them. ``pad_to_multiple_of`` rounds T up (few distinct
    shapes: see ``DataConfig.pad_to_multiple_of``)."""
    from ..model.vlm import collate_labels

    batch = collate_labels([(it["input_ids"], it["labels"]) for it in items], pad_id, pad_to_multiple_of)
    mask = batch["attention_mask"]
    batch["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T), padding repeats a valid index
    batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])  # (B, 3, S, S)
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    if "objects" in items[0]:
        batch["objects"] = [it["objects"] for it in items]  # B x [{"box", "words"}]: the grounding targets
    if "masks" in items[0]:
        batch["masks"] = [it["masks"] for it in items]  # B x (K_i, S, S) bool: the `given` mask source's input
    return batch


def num_label_tokens(labels: torch.Tensor) -> int:
    """Positions that carry a loss after the causal shift (label at t is predicted from position t-1)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
