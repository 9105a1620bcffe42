"""Shared machinery of in-LLM reductions that prune vision tokens at several LLM layers (pyramiddrop, sparsevlm).

Not a method itself (nothing is registered here). Like FastV (``fastv.py``, whose helpers it reuses), all vision
tokens enter the prompt and the LLM's decoder layers are driven one by one; unlike FastV the vision tokens are
pruned before each of several layers ``drop_layers`` (0-based indices of the layer that first runs on the
reduced sequence, i.e. "after layer l"), to ``n_1 >= n_2 >= ...`` tokens.

Budget: ``budget`` is the *equivalent* vision-token count, the mean over the LLM's L layers of the vision
tokens each layer sees: ``(d_1 * N + sum_s len_s * n_s) / L`` -- the figure ``fastv`` reports as
``equivalent_tokens`` (FastV's own ``budget`` is its post-pruning count instead). The stage counts follow a
geometric schedule ``n_s = N * ratio**s`` with ``ratio`` solved (bisection) so that the equivalent count is
the budget; the last stage is then rounded down, so ``budget - 1 < equivalent_tokens <= budget``.
``ratio=`` fixes the keep ratio per stage instead of a budget (PyramidDrop's lambda). The default drop layers
start after layer 2 (FastV's K), or after layer 1 when the budget cannot be reached otherwise (e.g. 16 of 256
tokens on 30 layers: two full layers alone cost 17.1 equivalent tokens); ``layers=`` sets them.

Subclasses implement ``scores`` (which vision tokens to keep) and may override ``prune`` (how the sequence
shrinks; SparseVLM also merges recycled tokens). Every step is shape-static (topk / sort / gather, no boolean
indexing on data), so the pruned prefill also runs on the ``meta`` device and bench's FLOP count needs no
special case. Generation is greedy with a per-layer KV cache (each layer holds the tokens it saw).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from .base import Reduction, check_budget, check_greedy, eos_tensor, greedy_loop
from ..hf_compat import cache_kwargs
from .fastv import _decoder_parts, additive_mask


def spread_layers(wanted: list[float], num_layers: int) -> list[int]:
    """Round ``wanted`` drop points to strictly increasing layers in 1..L-1 (fewer when the LLM is too shallow)."""
    out: list[int] = []
    for w in wanted:
        li = max(int(round(w)), out[-1] + 1 if out else 1)
        if li <= num_layers - 1:
            out.append(li)
    return out


def attention_rows(layer, h: torch.Tensor, cos_sin, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention probabilities of decoder layer ``layer`` for input ``h`` (B, T, D), mean over heads: (B, Q, T).

    ``rows``: (Q,) query positions (default all T). Recomputed eagerly for these rows only (RMSNorm -> q, k ->
    RoPE -> softmax(q k^T / sqrt(d) + mask)), so the layer itself keeps its SDPA kernel."""
    attn = layer.self_attn
    b, t, _ = h.shape
    x = layer.input_layernorm(h)  # (B, T, D)
    hd = attn.head_dim
    cos, sin = cos_sin
    xq, cq, sq, mq = (x, cos, sin, mask) if rows is None else (x[:, rows], cos[:, rows], sin[:, rows], mask[:, :, rows])
    q = attn.q_proj(xq).view(b, xq.shape[1], -1, hd).transpose(1, 2)  # (B, Hq, Q, hd)
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    q, _ = apply_rotary_pos_emb(q, q, cq, sq)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)  # (B, Hq, T, hd)
    logits = (q @ k.transpose(-1, -2)).float() * attn.scaling + mq.float()  # (B, Hq, Q, T)
    return logits.softmax(dim=-1).mean(dim=1)  # (B, Q, T)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at idx (B, T') along dim 1."""
    return torch.gather(x, 1, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(*idx.shape, *x.shape[2:]))


class StagedPruning(Reduction):
    """Prune vision tokens inside the LLM at ``drop_layers`` to a geometric schedule (see the module docstring)."""

    in_llm = True
    #: default drop points as fractions of the L layers after the first drop (subclasses set them)
    default_drops: tuple[float, ...] = ()

    def __init__(self, budget: int | None = None, model=None, layers: Any = None, ratio: float | None = None):
        super().__init__(model)
        name = self.registry_name
        if model is None:
            raise CompactVLMError(f"{name} needs the model it prunes",
                                  f"create it as REDUCTIONS.create({name!r}, budget=N, model=model)")
        num_layers = len(_decoder_parts(model.llm)[0])
        self.num_layers = num_layers
        if layers is None:
            drops = spread_layers(self.default_layers(num_layers, min(2, num_layers - 1)), num_layers)
        else:
            drops = [layers] if isinstance(layers, int) else list(layers)
            if not drops or any(isinstance(l, bool) or not isinstance(l, int) for l in drops) \
                    or sorted(set(drops)) != drops or drops[0] < 1 or drops[-1] > num_layers - 1:
                raise CompactVLMError(f"{name} layers={layers!r} are not increasing layers after which the LLM's "
                                      f"{num_layers} layers can prune",
                                      f"give increasing integers in 1..{num_layers - 1}, e.g. layers=2,8,16")
        if not drops:
            raise CompactVLMError(f"{name} needs an LLM of at least 2 layers (it has {num_layers})",
                                  "use a deeper LLM")
        self.drop_layers = drops  # also its prune_layers; the first drops[0] layers see every vision token
        if budget is not None and ratio is not None:
            raise CompactVLMError(f"{name} takes budget= or ratio=, not both", "drop one of them")
        if budget is None and ratio is None:
            raise CompactVLMError(f"{name} needs a budget (equivalent vision tokens) or a keep ratio per stage",
                                  "pass --budget N, or ratio=0.5 (PyramidDrop's lambda)")
        if ratio is not None and not 0 < float(ratio) <= 1:
            raise CompactVLMError(f"{name} ratio={ratio} is not in (0, 1]", "give the fraction kept per stage, e.g. 0.5")
        self.ratio = None if ratio is None else float(ratio)
        self.budget = None if budget is None else check_budget(name, budget)
        self.params = ({"budget": self.budget} if ratio is None else {"ratio": self.ratio}) | {"layers": tuple(drops)}
        self.last_kept_positions: torch.Tensor | None = None
        self.last_stage_counts: list[int] = []
        self.last_stage_positions: list[torch.Tensor] = []  # kept original positions (B, T_s) after each drop
        try:
            self.num_output_tokens(model.grid)
        except CompactVLMError:
            if layers is not None or drops[0] == 1:
                raise
            # the default's first 2 layers see every token: too many for a small budget; prune after layer 1
            self.drop_layers = spread_layers(self.default_layers(num_layers, 1), num_layers)
            self.params["layers"] = tuple(self.drop_layers)
            self.num_output_tokens(model.grid)

    @property
    def prune_layers(self) -> list[int]:
        return list(self.drop_layers)

    def default_layers(self, num_layers: int, first: int) -> list[float]:
        """Default drop points (before rounding) when the first drop is after layer ``first``."""
        return [first] + [first + f * (num_layers - first) for f in self.default_drops]

    # ---- token counts ---------------------------------------------------------------------------------
    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        """All of the compressor's tokens enter the prompt (pruning happens inside the LLM)."""
        m = self._require_model()
        n = m.compressor.num_output_tokens(grid or m.grid)
        self.schedule(n)
        return n

    def stage_lengths(self) -> list[int]:
        """Layers run by each stage: before the first drop, then between drops."""
        bounds = [0] + self.drop_layers + [self.num_layers]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    def schedule(self, n: int) -> list[int]:
        """Vision tokens after each drop (len(drop_layers) counts) out of ``n``."""
        lens = self.stage_lengths()
        stages = len(self.drop_layers)
        if self.ratio is not None:
            return [max(1, int(round(n * self.ratio ** (s + 1)))) for s in range(stages)]
        name, budget, total = self.registry_name, self.budget, self.num_layers
        check_budget(name, budget, n, "vision tokens the compressor emits")
        lo_eq = (lens[0] * n + sum(lens[1:])) / total  # every later stage keeps 1 token
        if budget < lo_eq:
            raise CompactVLMError(
                f"{name} cannot reach {budget} equivalent tokens: its first {lens[0]} of {total} LLM layers see all "
                f"{n} vision tokens, so the least it can reach is {lo_eq:.1f}",
                f"pick a budget of at least {math.ceil(lo_eq)}, or prune earlier (layers=1,...)")
        target = budget * total

        def cost(r: float) -> float:
            return lens[0] * n + sum(lens[s + 1] * max(1.0, n * r ** (s + 1)) for s in range(stages))

        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cost(mid) <= target else (lo, mid)
        counts = [min(n, max(1, int(round(n * lo ** (s + 1))))) for s in range(stages)]
        for s in range(1, stages):  # non-increasing
            counts[s] = min(counts[s], counts[s - 1])
        rest = target - lens[0] * n - sum(lens[s + 1] * counts[s] for s in range(stages - 1))
        counts[-1] = max(1, min(counts[-2] if stages > 1 else n, rest // lens[-1]))
        while stages > 1 and lens[0] * n + sum(l * c for l, c in zip(lens[1:], counts)) > target:
            s = max(i for i in range(stages) if counts[i] > 1)  # rounding overshot: take from the latest stage
            counts[s] -= 1
        return counts

    def equivalent_tokens(self, grid: tuple[int, int] | None = None) -> float:
        n = self.num_output_tokens(grid)
        lens = self.stage_lengths()
        return (lens[0] * n + sum(l * c for l, c in zip(lens[1:], self.schedule(n)))) / self.num_layers

    def forward(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        return compressor.check_output(compressor(feats), feats)  # (B, N, D): all tokens

    # ---- what subclasses implement --------------------------------------------------------------------
    def scores(self, layer, h: torch.Tensor, cos_sin, mask: torch.Tensor, image_mask: torch.Tensor,
               valid: torch.Tensor, qi: int) -> torch.Tensor:
        """(B, T) importance of every current position (only image positions are compared)."""
        raise NotImplementedError

    def prune(self, stage: int, h: torch.Tensor, scores: torch.Tensor, image_mask: torch.Tensor, n_img: int,
              n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept slots (B, T') in sequence order and the new hidden states (B, T', D). Default: the top-``n_keep``
        image slots by score and every other slot."""
        t = h.shape[1]
        s = scores.float().masked_fill(~image_mask, float("inf"))  # text and padding always kept
        keep = s.topk(t - n_img + n_keep, dim=1).indices.sort(dim=1).values  # (B, T')
        return keep, gather_rows(h, keep)

    # ---- the LLM side ---------------------------------------------------------------------------------
    def _check_images(self, image_mask: torch.Tensor) -> int:
        n = self.num_output_tokens()
        if image_mask.device.type != "meta":
            per = image_mask.sum(dim=1)
            if bool((per != n).any()):
                raise CompactVLMError(f"{self.registry_name} needs {n} image tokens per sample, got {per.tolist()}",
                                      "give one image per sample")
        return n

    def _prefill(self, llm, embeds: torch.Tensor, valid: torch.Tensor, image_mask: torch.Tensor,
                 position_ids: torch.Tensor, cache=None, score_index: int = -1):
        """Every layer on a prompt, pruning before each drop layer. Returns (hidden after the final norm (B, T', D),
        kept original positions (B, T'), (stage of each layer, key validity (B, T_s) of each stage) for decoding)."""
        layers, rotary, norm, _ = _decoder_parts(llm)
        b, t, _ = embeds.shape
        n_img = self._check_images(image_mask)
        counts = self.schedule(n_img)
        qi = score_index % t
        h, pos = embeds, position_ids.expand(b, t)
        cos_sin = rotary(h, pos)
        mask = additive_mask(valid, t, h.dtype)  # (B, 1, T, T)
        orig = torch.arange(t, device=h.device).expand(b, t)  # original prompt position of each slot
        layer_stage, stage_valid, stage_pos, scores, stage = [], [valid], [], None, 0
        for i, layer in enumerate(layers):
            if stage < len(counts) and i == self.drop_layers[stage]:
                keep, h = self.prune(stage, h, scores, image_mask, n_img, counts[stage])  # (B, T'), (B, T', D)
                pos, valid, orig = gather_rows(pos, keep), gather_rows(valid, keep), gather_rows(orig, keep)
                image_mask = gather_rows(image_mask, keep)
                qi = qi - (t - keep.shape[1])  # the query slot is after every image slot (text is never dropped)
                t, n_img, stage = keep.shape[1], counts[stage], stage + 1
                stage_valid.append(valid)
                stage_pos.append(orig)
                cos_sin = rotary(h, pos)
                mask = additive_mask(valid, t, h.dtype)  # (B, 1, T', T')
            if stage < len(counts) and i == self.drop_layers[stage] - 1:
                scores = self.scores(layer, h, cos_sin, mask, image_mask, valid, qi)  # (B, T_cur)
            layer_stage.append(stage)
            h = layer(h, attention_mask=mask, position_ids=pos, use_cache=cache is not None,
                      position_embeddings=cos_sin, **cache_kwargs(layer, cache))
        self.last_kept_positions = orig
        self.last_stage_counts = counts
        self.last_stage_positions = stage_pos
        return norm(h), orig, (layer_stage, stage_valid)

    def llm_forward(self, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                    image_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None, logits_to_keep: int = 0, score_index: int = -1,
                    past_key_values=None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Prefill with pruning; logits cover the kept positions (``last_kept_positions``), as FastV's."""
        if labels is not None:
            raise CompactVLMError(f"{self.registry_name} is an inference-time reduction; it cannot compute a "
                                  "training loss", f"train without --reduce, then evaluate with --reduce {self.registry_name}")
        b, t, _ = inputs_embeds.shape
        valid = (torch.ones(b, t, dtype=torch.bool, device=inputs_embeds.device) if attention_mask is None
                 else attention_mask.bool())
        if position_ids is None:
            position_ids = torch.arange(t, device=inputs_embeds.device).unsqueeze(0)
        h, _, _ = self._prefill(llm, inputs_embeds, valid, image_mask, position_ids, past_key_values, score_index)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=llm.lm_head(h), past_key_values=past_key_values)

    @torch.inference_mode()
    def generate(self, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor,
                 max_new_tokens: int = 32, do_sample: bool = False, pad_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, num_beams: int = 1, **kwargs: Any) -> torch.Tensor:
        """Greedy decoding with the pruned per-layer KV cache: (B, new tokens) ids, finished rows padded."""
        check_greedy(self.registry_name, do_sample, num_beams, kwargs)
        eos = eos_tensor(llm, eos_token_id, inputs_embeds.device)
        layers, rotary, norm, lm_head = _decoder_parts(llm)
        valid = attention_mask.bool()
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(~valid, 0)  # (B, T) as HF generate
        cache = DynamicCache(config=llm.config)
        h, _, (layer_stage, stage_valid) = self._prefill(llm, inputs_embeds, valid, image_mask, pos, cache)
        st = {"valid": stage_valid, "pos": pos[:, -1:] + 1}  # per stage (B, T_s); (B, 1)
        embed = llm.get_input_embeddings()

        def step(tok: torch.Tensor) -> torch.Tensor:
            ones = torch.ones_like(tok, dtype=torch.bool).unsqueeze(1)  # (B, 1)
            st["valid"] = [torch.cat([v, ones], 1) for v in st["valid"]]  # (B, T_s + t) per stage
            x = embed(tok).unsqueeze(1)  # (B, 1, D)
            cos_sin = rotary(x, st["pos"])
            masks = [additive_mask(v, 1, x.dtype) for v in st["valid"]]  # (B, 1, 1, T_s + t)
            for i, layer in enumerate(layers):
                x = layer(x, attention_mask=masks[layer_stage[i]], position_ids=st["pos"], use_cache=True,
                          position_embeddings=cos_sin, **cache_kwargs(layer, cache))
            st["pos"] = st["pos"] + 1
            return lm_head(norm(x))

        return greedy_loop(lm_head(h[:, -1:]), step, max_new_tokens, pad_token_id, eos)
