"""The grounding objective: teach the compressor to write, into the vision token that covers an object, the LLM's
own word embeddings of that object ("green" + "circle", "dress", "sign" + "stop"), and near-zero elsewhere.

Why (docs/recipe.md §9): on SceneQA the LLM learns to answer from such tokens within 50 steps when they are given
(the "oracle tokens" run), while end-to-end training of the projector through the LLM's answers or captions does
not teach it to put the objects there at this budget. This stage needs no LLM forward pass (compressor + frozen
encoder features only), so it costs seconds per hundred images.

Deviation from the seed papers: none of them has this stage (LLaVA aligns the projector with captions only). It
uses SceneQA's scene annotations (each object's box, name and colour or sign word), so it applies to data that
has them; it is a training aid for the testbed, reported as such wherever it is used.

Targets: for a compressor that declares ``token_windows`` (full tokens, STF, AvgPool, TokenConcat) the object's
vector goes to the window holding its box centre (to the window's first token when there are several per window);
for the others (learned queries, groups, objects) each object is matched to one distinct token by minimum squared
distance (Hungarian matching, as DETR does), so every compressor can be grounded on the same data.
With ``place`` set, each object's vector also says where its centre (x, y) (fractions of the image) is, in words the
questions use, so the quadrant ("top left") and which of two objects is higher are in the token itself, not only in
its position in the sequence: ``words``: (1 - y) "top" + y "bottom" + (1 - x) "left" + x "right"; ``centred``:
(y - 0.5) ("bottom" - "top") + (x - 0.5) ("right" - "left"), the same differences between places without the part
every object shares (with ``words`` different objects' tokens become alike: mean cosine 0.78 vs 0.44, and stage 2
stayed blind longer; docs/recipe.md §10).
Loss per image: mean squared error over the object tokens + ``background`` x mean squared error of the other tokens
towards 0; summed over the batch and divided by the number of objects (the trainer's token-mean convention).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import CompactVLMError


class WordVectors:
    """Object words -> the sum over words of the mean input embedding of each word's tokens (with a leading
    space, as the words appear inside a sentence); cached per word."""

    def __init__(self, tokenizer, embedding: torch.nn.Module):
        self.tok = tokenizer
        self.emb = embedding
        self._cache: dict[str, torch.Tensor] = {}

    def word(self, w: str) -> torch.Tensor:
        if w not in self._cache:
            ids = self.tok(" " + w, add_special_tokens=False).input_ids
            with torch.no_grad():
                self._cache[w] = self.emb.weight[ids].float().mean(dim=0).detach().cpu()  # (D,)
        return self._cache[w]

    def __call__(self, words: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.word(w) for w in words]).sum(dim=0)  # (D,)

    def place(self, box: Sequence[float], mode: str = "words") -> torch.Tensor:
        """The place words of a box's centre (box as fractions of the image), interpolated by its coordinates;
        ``centred``: only their differences, so that the image's centre gets 0."""
        x = min(max((box[0] + box[2]) / 2, 0.0), 1.0)
        y = min(max((box[1] + box[3]) / 2, 0.0), 1.0)
        if mode == "centred":
            return ((y - 0.5) * (self.word("bottom") - self.word("top"))
                    + (x - 0.5) * (self.word("right") - self.word("left")))  # (D,)
        return ((1 - y) * self.word("top") + y * self.word("bottom")
                + (1 - x) * self.word("left") + x * self.word("right"))  # (D,)


def object_vector(obj: dict, vectors: WordVectors, place: bool | str = False) -> torch.Tensor:
    """One object's target vector ``(D,)``: its words, plus its place words when ``place`` (True or "words":
    interpolated place words; "centred": their differences only; False / "none": no place)."""
    v = vectors(obj["words"])
    if place in (False, None, "none"):
        return v
    return v + vectors.place(obj["box"], "centred" if place == "centred" else "words")


def window_token(box: Sequence[float], windows: tuple[int, int, int]) -> int:
    """The token index of the window holding the centre of ``box`` (fractions of the image): its first token."""
    rows, cols, per = windows
    r = min(max(int((box[1] + box[3]) / 2 * rows), 0), rows - 1)
    c = min(max(int((box[0] + box[2]) / 2 * cols), 0), cols - 1)
    return (r * cols + c) * per


def window_targets(objects: Sequence[dict], windows: tuple[int, int, int], vectors: WordVectors,
                   dim: int, place: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets for a windowed compressor: ``(M, D)`` target tokens and an ``(M,)`` 0/1 object mask,
    M = rows * cols * per_window; an object's vector goes to the first token of the window holding its box centre
    (objects sharing a window add up)."""
    rows, cols, per = windows
    t = torch.zeros(rows * cols * per, dim)
    m = torch.zeros(rows * cols * per)
    for o in objects:
        i = window_token(o["box"], windows)
        t[i] += object_vector(o, vectors, place)
        m[i] = 1.0
    return t, m


def matched_targets(tokens: torch.Tensor, objects: Sequence[dict], vectors: WordVectors, place: bool | str = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets for a compressor without fixed windows: each object's vector is assigned to a distinct
    token (Hungarian matching on squared distance to the current tokens ``(M, D)``); more objects than tokens: the
    best-matched ``M`` are kept."""
    from scipy.optimize import linear_sum_assignment

    m_tok, dim = tokens.shape
    t = torch.zeros(m_tok, dim)
    m = torch.zeros(m_tok)
    if not objects:
        return t, m
    vec = torch.stack([object_vector(o, vectors, place) for o in objects])  # (K, D)
    cost = torch.cdist(vec, tokens.detach().float().cpu()) ** 2  # (K, M)
    rows, cols = linear_sum_assignment(cost.numpy())
    for k, j in zip(rows, cols):
        t[j] = vec[k]
        m[j] = 1.0
    return t, m


def grounding_loss(tokens: torch.Tensor, objects: Sequence[Sequence[dict]], vectors: WordVectors,
                   windows: tuple[int, int, int] | None, background: float = 0.1, place: bool | str = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` (B, M, D) of a compressor, ``objects`` per image -> (loss sum, weight), the sum over images of
    ``num_objects`` x (object-token MSE + background x other-token MSE) and the sum of the weights."""
    b, m_tok, dim = tokens.shape
    if len(objects) != b:
        raise CompactVLMError(f"{len(objects)} object lists for {b} images", "give one list per image")
    ts, ms = [], []
    for i in range(b):
        if windows is not None:
            t, m = window_targets(objects[i], windows, vectors, dim, place)
            if t.shape[0] != m_tok:
                raise CompactVLMError(f"the compressor declares {windows} token windows ({t.shape[0]} tokens) but "
                                      f"produced {m_tok}", "fix its token_windows()")
        else:
            t, m = matched_targets(tokens[i], objects[i], vectors, place)
        ts.append(t)
        ms.append(m)
    target = torch.stack(ts).to(tokens.device)  # (B, M, D)
    mask = torch.stack(ms).to(tokens.device)  # (B, M)
    se = ((tokens.float() - target) ** 2).mean(dim=-1)  # (B, M): per-token MSE
    n_bg = (1 - mask).sum(dim=1)  # (B,)
    obj_mse = (se * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    bg_mse = (se * (1 - mask)).sum(dim=1) / n_bg.clamp(min=1)
    weight = torch.tensor([float(num_objects(o)) for o in objects], device=tokens.device)  # (B,)
    return ((obj_mse + background * bg_mse) * weight).sum(), weight.sum()


def num_objects(objects: Sequence[dict]) -> int:
    """An image's weight in the grounding loss: its number of objects (at least 1: an image without objects still
    pulls its tokens towards 0). The trainer divides the batch's loss sum by the sum of these."""
    return max(len(objects), 1)
