"""FastV: after layer K of the LLM keep only the vision tokens the last token attends to most.

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for
Large Vision-Language Models" (ECCV 2024); the FastV rows of the STF paper (Table 2) and Mask-LLaVA (Fig. 5).
- All vision tokens go into the prompt (any compressor); layers 1..K of the LLM see all of them.
- The attention of layer K is read for the prompt's last token (the query that produces the first
  answer token), averaged over heads; the ``budget`` vision tokens with the largest attention are kept
  (``ratio=`` keeps a fraction instead; FastV's default K=2, R=50% is ``k=2, ratio=0.5``). Text tokens are
  never dropped. Layers K+1..L run on the kept tokens.
- Kept tokens keep their original RoPE positions; generated tokens continue after the original prompt
  length (positions from the attention mask as in HF ``generate``, so left padding is handled).
- KV cache: a ``transformers.DynamicCache`` whose layers 1..K hold every prompt token and layers K+1..L the
  kept ones; generated tokens are appended to both, so decoding costs what the pruned prompt costs.
- Attention implementation: the model's own (SDPA by default) runs every layer; layer K's scores are
  recomputed once, eagerly, for the one query row that needs them (RMSNorm -> q of the last token, k of all
  tokens -> RoPE -> ``softmax(q k^T / sqrt(d) + mask)``), so no layer falls back to eager attention.
- The LLM's decoder layers are driven one by one here (``llm.model.layers``, ``rotary_emb``, ``norm``,
  ``lm_head``: the Llama layout, which SmolLM2, Llama, Mistral and Qwen2 share); batches may be left-padded.
Deviations: generation is greedy only (``do_sample=True`` raises); training through FastV (``labels``) is
not supported; the score is the last token's attention (as FastV's KV-cache implementation), not the
average attention every token receives (the paper's offline analysis).
``equivalent_tokens = (K * N + (L - K) * budget) / L`` is the vision-token count of a plain model with the
same LLM cost (N = all vision tokens, L = LLM layers).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from ..hf_compat import cache_kwargs
from ..registry import REDUCTIONS
from .base import Reduction, check_budget, check_greedy, eos_tensor, greedy_loop


def _decoder_parts(llm):
    core = getattr(llm, "model", None)
    parts = [getattr(core, n, None) for n in ("layers", "rotary_emb", "norm")] + [getattr(llm, "lm_head", None)]
    if any(p is None for p in parts):
        raise CompactVLMError(f"fastv drives the decoder layers itself and does not know {type(llm).__name__}",
                              "use a Llama-layout causal LM (llm.model.layers/rotary_emb/norm, llm.lm_head), e.g. SmolLM2")
    return parts


def additive_mask(valid: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, S) additive mask: the Q queries are the last Q of S keys (causal); invalid keys hidden."""
    s = valid.shape[1]
    q_pos = torch.arange(s - num_queries, s, device=valid.device)  # (Q,)
    allowed = valid[:, None, None, :].bool() & (torch.arange(s, device=valid.device) <= q_pos[:, None])  # (B,1,Q,S)
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)



@REDUCTIONS.register("fastv")
class FastV(Reduction):
    in_llm = True

    def __init__(self, budget: int | None = None, model=None, k: int = 2, ratio: float | None = None):
        super().__init__(model)
        if model is None:
            raise CompactVLMError("fastv needs the model it prunes", "create it as REDUCTIONS.create('fastv', budget=N, model=model)")
        if budget is not None and ratio is not None:
            raise CompactVLMError("fastv takes budget= or ratio=, not both", "drop one of them")
        if ratio is not None and not 0 < float(ratio) <= 1:
            raise CompactVLMError(f"fastv ratio={ratio} is not in (0, 1]", "give the fraction of vision tokens to keep, e.g. 0.5")
        if budget is None and ratio is None:
            raise CompactVLMError("fastv needs a budget (vision tokens kept after layer K) or a keep ratio",
                                  "pass --budget N, or ratio=0.5 (FastV's default R=50%)")
        layers = _decoder_parts(model.llm)[0]
        if not 1 <= int(k) < len(layers):
            raise CompactVLMError(f"fastv k={k} is not a layer after which the LLM's {len(layers)} layers can prune",
                                  f"pick k in 1..{len(layers) - 1} (FastV's default is 2)")
        self.k = int(k)
        self.num_layers = len(layers)
        self.ratio = None if ratio is None else float(ratio)
        self.budget = None if budget is None else check_budget("fastv", budget)
        self.params = {"budget": self.budget, "k": self.k} if ratio is None else {"ratio": self.ratio, "k": self.k}
        self.last_kept_positions: torch.Tensor | None = None
        self.num_output_tokens(model.grid)

    @property
    def prune_layers(self) -> list[int]:
        return [self.k]

    # ---- token counts ---------------------------------------------------------------------------------
    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        """All of the compressor's tokens enter the prompt (pruning happens inside the LLM)."""
        m = self._require_model()
        n = m.compressor.num_output_tokens(grid or m.grid)
        self.kept(n)
        return n

    def kept(self, n: int) -> int:
        """Vision tokens kept after layer K out of ``n``."""
        if self.ratio is not None:
            return max(1, int(round(n * self.ratio)))
        return check_budget("fastv", self.budget, n, "vision tokens the compressor emits")

    def equivalent_tokens(self, grid: tuple[int, int] | None = None) -> float:
        n = self.num_output_tokens(grid)
        return (self.k * n + (self.num_layers - self.k) * self.kept(n)) / self.num_layers

    def forward(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        return compressor.check_output(compressor(feats), feats)  # (B, N, D): all tokens

    # ---- the LLM side ---------------------------------------------------------------------------------
    def _scores(self, layer, h: torch.Tensor, cos_sin, mask: torch.Tensor, qi: int) -> torch.Tensor:
        """Attention of layer ``layer`` from query position ``qi`` to every key, mean over heads: (B, T)."""
        attn = layer.self_attn
        b, t, _ = h.shape
        x = layer.input_layernorm(h)  # (B, T, D)
        hd = attn.head_dim
        q = attn.q_proj(x[:, qi : qi + 1]).view(b, 1, -1, hd).transpose(1, 2)  # (B, Hq, 1, hd)
        k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        cos, sin = cos_sin
        q, _ = apply_rotary_pos_emb(q, q, cos[:, qi : qi + 1], sin[:, qi : qi + 1])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)  # (B, Hq, T, hd)
        logits = (q @ k.transpose(-1, -2)).float() * attn.scaling + mask[:, :, qi : qi + 1].float()  # (B, Hq, 1, T)
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, T)

    def _keep(self, scores: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """(B, T') sorted positions kept: every non-image position plus the top image positions."""
        if image_mask.device.type == "meta":  # FLOPs on the meta device (efficiency.flops): shapes only
            n = self.num_output_tokens()
            s = scores.float().masked_fill(~image_mask, float("inf"))  # text and padding always kept
            return s.topk(image_mask.shape[1] - n + self.kept(n), dim=1).indices.sort(dim=1).values  # (B, T')
        n = image_mask.sum(dim=1)
        if bool((n != n[0]).any()):
            raise CompactVLMError(f"fastv needs the same number of image tokens per sample, got {n.tolist()}",
                                  "give one image per sample")
        n_keep = self.kept(int(n[0]))
        s = scores.masked_fill(~image_mask, float("-inf"))
        top = s.topk(n_keep, dim=1).indices  # (B, n_keep)
        keep = (~image_mask).scatter(1, top, True)  # (B, T)
        b, t = keep.shape
        return torch.arange(t, device=keep.device).expand(b, t)[keep].view(b, -1)  # (B, T')

    def _prefill(self, llm, embeds: torch.Tensor, valid: torch.Tensor, image_mask: torch.Tensor,
                 position_ids: torch.Tensor, cache=None, score_index: int = -1):
        """Run every layer on a prompt, pruning vision tokens before layer K+1.

        Returns (hidden (B, T', D) after the final norm, kept positions (B, T'))."""
        layers, rotary, norm, _ = _decoder_parts(llm)
        b, t, _ = embeds.shape
        qi = score_index % t
        h, pos = embeds, position_ids.expand(b, t)
        cos_sin = rotary(h, pos)
        mask = additive_mask(valid, t, h.dtype)  # (B, 1, T, T)
        keep = torch.arange(t, device=h.device).expand(b, t)
        scores = None
        for i, layer in enumerate(layers):
            if i == self.k - 1:
                scores = self._scores(layer, h, cos_sin, mask, qi)  # (B, T)
            if i == self.k:
                keep = self._keep(scores, image_mask)  # (B, T')
                h = torch.gather(h, 1, keep.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, T', D)
                pos, valid = torch.gather(pos, 1, keep), torch.gather(valid, 1, keep)
                cos_sin = rotary(h, pos)
                mask = additive_mask(valid, h.shape[1], h.dtype)  # (B, 1, T', T')
            h = layer(h, attention_mask=mask, position_ids=pos, use_cache=cache is not None,
                      position_embeddings=cos_sin, **cache_kwargs(layer, cache))
        self.last_kept_positions = keep
        return norm(h), keep

    def llm_forward(self, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                    image_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None, logits_to_keep: int = 0, score_index: int = -1,
                    past_key_values=None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Prefill with pruning. Logits cover the kept positions (``last_kept_positions``), ``logits_to_keep``
        as in HF. Positions default to ``arange(T)`` as in HF's forward; ``score_index`` picks the query whose
        attention ranks the vision tokens (default the last position)."""
        if labels is not None:
            raise CompactVLMError("fastv is an inference-time reduction; it cannot compute a training loss",
                                  "train without --reduce, then evaluate with --reduce fastv")
        b, t, _ = inputs_embeds.shape
        valid = (torch.ones(b, t, dtype=torch.bool, device=inputs_embeds.device) if attention_mask is None
                 else attention_mask.bool())
        if position_ids is None:
            position_ids = torch.arange(t, device=inputs_embeds.device).unsqueeze(0)
        h, _ = self._prefill(llm, inputs_embeds, valid, image_mask, position_ids, past_key_values, score_index)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=llm.lm_head(h), past_key_values=past_key_values)

    def _decode(self, llm, embeds: torch.Tensor, pos: torch.Tensor, valid_all: torch.Tensor,
                valid_kept: torch.Tensor, cache) -> torch.Tensor:
        """One step for (B, 1, D) new-token embeddings at positions (B, 1); returns (B, 1, V) logits."""
        layers, rotary, norm, lm_head = _decoder_parts(llm)
        cos_sin = rotary(embeds, pos)
        m_all = additive_mask(valid_all, 1, embeds.dtype)  # (B, 1, 1, T + t)
        m_kept = additive_mask(valid_kept, 1, embeds.dtype)  # (B, 1, 1, T' + t)
        h = embeds
        for i, layer in enumerate(layers):
            h = layer(h, attention_mask=m_all if i < self.k else m_kept, position_ids=pos, use_cache=True,
                      position_embeddings=cos_sin, **cache_kwargs(layer, cache))
        return lm_head(norm(h))

    @torch.inference_mode()
    def generate(self, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor,
                 max_new_tokens: int = 32, do_sample: bool = False, pad_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, num_beams: int = 1, **kwargs: Any) -> torch.Tensor:
        """Greedy decoding with the pruned KV cache: (B, new tokens) ids, finished rows padded."""
        check_greedy("fastv", do_sample, num_beams, kwargs)
        eos = eos_tensor(llm, eos_token_id, inputs_embeds.device)
        valid = attention_mask.bool()
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(~valid, 0)  # (B, T) as HF generate
        cache = DynamicCache(config=llm.config)
        h, keep = self._prefill(llm, inputs_embeds, valid, image_mask, pos, cache)
        st = {"all": valid, "kept": torch.gather(valid, 1, keep), "pos": pos[:, -1:] + 1}  # (B, T), (B, T'), (B, 1)
        embed = llm.get_input_embeddings()

        def step(tok: torch.Tensor) -> torch.Tensor:
            ones = torch.ones_like(tok, dtype=torch.bool).unsqueeze(1)  # (B, 1)
            st["all"], st["kept"] = torch.cat([st["all"], ones], 1), torch.cat([st["kept"], ones], 1)
            logits = self._decode(llm, embed(tok).unsqueeze(1), st["pos"], st["all"], st["kept"], cache)
            st["pos"] = st["pos"] + 1
            return logits

        return greedy_loop(llm.lm_head(h[:, -1:]), step, max_new_tokens, pad_token_id, eos)
