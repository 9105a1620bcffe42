"""lmms-eval model plugin: evaluate compactvlm models with lmms-eval, no fork and no environment variable.

Registration: ``pyproject.toml`` declares the entry point ``compactvlm`` in the group ``lmms_eval.models``,
pointing at ``manifest`` below. lmms-eval (>= 0.7.3: ``lmms_eval.models.registry_v2.ModelRegistryV2.
load_entrypoint_manifests``) loads every entry point of that group when ``lmms_eval.models`` is imported; a
callable returning a ``ModelManifest`` is one of the payloads it accepts. The class is a "simple" model
(``is_simple = True``): lmms-eval hands it plain-text contexts and the task's ``doc_to_visual``.

    pip install -e ".[lmms-eval]"
    lmms-eval --model compactvlm --model_args pretrained=DIR,budget=64,reduce=avgpool --tasks mme --batch_size 8
    lmms-eval --model compactvlm --model_args 'pretrained=DIR,method="mlp2x_gelu+fastv:budget=64,k=2"' ...

SceneQA as local lmms-eval tasks (no hub): ``interop.lmms_eval_tasks.write_sceneqa_tasks`` (``--include_path``).

Model arguments (``--model_args k=v,...``):
    pretrained      a compact folder, or a llava-hf / LLaVA / LLaVA-STF folder read directly (``interop.load_model``)
    method          the one spec syntax of ``compactvlm.spec`` (``NAME[:k=v,...][+REDUCTION[:k=v,...]]`` or a named
                    variant), as ``compactvlm ask --compressor``: the compressor part names the checkpoint's
                    compressor (test-time options may differ), the reduction part is applied at test time; quote it
                    when it holds commas (lmms-eval splits model_args at commas outside quotes)
    budget, reduce  test-time token budget: the compressor's own (``objects``), or a training-free reduction
                    (``reduce=random|avgpool|visionzip|fastv|dart|divprune|pyramiddrop|sparsevlm|tome``, also
                    ``reduce=fastv:k=3``), as ``compactvlm ask --budget --reduce``
    device, dtype   default: cuda when available, else cpu; the checkpoint's dtype
    vision_tower    local CLIP folder for LLaVA / LLaVA-STF folders whose mm_vision_tower is a hub name
    max_new_tokens  for tasks whose generation_kwargs set none (default 128)
    threads         CPU threads
    batch_size      requests per forward pass (lmms-eval's --batch_size)

Requests: ``generate_until`` args ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``, batched by
equal ``gen_kwargs``; greedy unless ``temperature > 0``; the output is cut at the first ``until`` string.
``loglikelihood`` args ``(context, continuation | doc_to_target, doc_to_visual, doc_id, task, split)`` or
``(context, continuation)``: returns (sum of the continuation tokens' log-probabilities, whether greedy decoding
gives exactly those tokens), the continuation tokenized on its own after the chat prompt that ends with the
assistant header. Requests with and without an image are batched separately. One image per sample: with
several, the first is used (a warning says so); videos are refused.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Sequence

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ..errors import CompactVLMError

MODEL_ID = "compactvlm"


def manifest():
    """The entry-point payload: lmms-eval's manifest for the ``compactvlm`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.CompactVLMLmms")


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _cut(text: str, until: Sequence[str] | None) -> str:
    for stop in until or ():
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class CompactVLMLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, budget: int | None = None, reduce: str | None = None,
                 method: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 1, max_new_tokens: int = 128, vision_tower: str | None = None,
                 threads: int | None = None, max_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise CompactVLMError(f"unknown compactvlm model_args: {', '.join(sorted(kwargs))}",
                                  "valid: pretrained, method, budget, reduce, device, dtype, vision_tower, "
                                  "max_new_tokens, threads, batch_size")
        import torch

        from ..runtime import set_threads
        from ..spec import MethodSpec
        from . import load_model

        spec = MethodSpec.combine(method, reduce, budget)  # checked before the model load
        set_threads(threads or None)
        own = {"compressor": spec.compressor, "compressor_params": spec.compressor_params or None} if spec.compressor else {}
        model = load_model(str(pretrained), dtype=dtype, vision_tower=vision_tower, **own)
        spec.apply(model)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self._device).eval()
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            warnings.warn("compactvlm: batch_size=auto is not supported; using 1", stacklevel=2)
            batch_size = 1
        self.batch_size_per_gpu = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self._warned_multi = False

    # ---- lmms-eval properties --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def tokenizer(self):
        return self.model.tokenizer

    # ---- inputs ------------------------------------------------------------------------------------------
    def _image(self, doc_to_visual, doc_id, task, split):
        from PIL import Image

        if doc_to_visual is None:
            return None
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        visuals = [v for v in visuals if v is not None]
        if not visuals:
            return None
        if not all(isinstance(v, Image.Image) for v in visuals):
            raise CompactVLMError(f"task {task!r} gives non-image visuals ({type(visuals[0]).__name__})",
                                  "compactvlm models take one image per sample (no video or audio)")
        if len(visuals) > 1 and not self._warned_multi:
            warnings.warn(f"compactvlm: task {task!r} gives {len(visuals)} images per sample; using the first",
                          stacklevel=2)
            self._warned_multi = True
        return visuals[0]

    def _prompt_ids(self, context: str, with_image: bool) -> list[int]:
        if context.strip() or with_image:
            return self.model.prompt_ids(context if context.strip() else "<image>", with_image=with_image)
        from ..model.prompting import _encode_text  # empty context (unconditional log-likelihood)

        msgs = [] if self.model.system_prompt is None else [{"role": "system", "content": self.model.system_prompt}]
        text = self.tokenizer.apply_chat_template(msgs + [{"role": "user", "content": ""}], tokenize=False,
                                                  add_generation_prompt=True)
        return _encode_text(self.tokenizer, text, 0)

    # ---- requests ----------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        items = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            items.append((i, context, dict(gen_kwargs or {}), self._image(doc_to_visual, doc_id, task, split)))
        groups: dict[tuple, list] = {}
        for it in items:
            groups.setdefault((json.dumps(it[2], sort_keys=True, default=str), it[3] is not None), []).append(it)
        out: list[str | None] = [None] * len(items)
        for (_, with_image), group in groups.items():
            group.sort(key=lambda it: -len(it[1]))  # similar lengths together: less padding
            for chunk in _batches(group, self.batch_size):
                gk = dict(chunk[0][2])
                until = gk.pop("until", None)
                until = [until] if isinstance(until, str) else list(until or [])
                kw: dict[str, Any] = {}
                temperature = float(gk.get("temperature") or 0)
                if temperature > 0:
                    kw.update(do_sample=True, temperature=temperature, top_p=float(gk.get("top_p") or 1.0))
                if int(gk.get("num_beams") or 1) > 1:
                    kw["num_beams"] = int(gk["num_beams"])
                res = self.model.generate([it[3] for it in chunk] if with_image else None, [it[1] for it in chunk],
                                          max_new_tokens=int(gk.get("max_new_tokens") or self.max_new_tokens), **kw)
                for it, text in zip(chunk, res.texts):
                    out[it[0]] = _cut(text, until)
                    self.cache_hook.add_partial("generate_until", (it[1], it[2]), out[it[0]])
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        import torch

        items = []
        for i, req in enumerate(requests):
            args = req.args
            if len(args) == 2:
                (context, cont), image = args, None
            else:
                context, cont, doc_to_visual, doc_id, task, split = args[:6]
                if callable(cont):
                    cont = cont(self.task_dict[task][split][doc_id])
                image = self._image(doc_to_visual, doc_id, task, split)
            if isinstance(cont, (list, tuple)):
                cont = cont[0]
            ctx = self._prompt_ids(str(context), image is not None)
            cont_ids = self.tokenizer(str(cont), add_special_tokens=False)["input_ids"]
            items.append((i, ctx, cont_ids, image))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        for with_image in (True, False):
            group = sorted((it for it in items if (it[3] is not None) == with_image), key=lambda it: -len(it[1]) - len(it[2]))
            for chunk in _batches(group, self.batch_size):
                seqs = [it[1] + it[2] for it in chunk]
                ids, mask = self.model.pad_left(seqs)
                keep = max(len(it[2]) for it in chunk) + 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                pix = self.model.processor([it[3] for it in chunk]) if with_image else None
                with torch.inference_mode():
                    logits = self.model(ids.to(self.device), mask.to(self.device),
                                        None if pix is None else pix.to(self.device),
                                        position_ids=pos.to(self.device), logits_to_keep=keep).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                for row, it in enumerate(chunk):
                    n = len(it[2])
                    if n == 0:
                        out[it[0]] = (0.0, True)
                        continue
                    target = torch.tensor(it[2], device=logp.device)
                    at = slice(keep - n - 1, keep - 1)  # the positions that predict the continuation tokens
                    lp = float(logp[row, at].gather(-1, target[:, None]).sum())
                    greedy = bool((logits[row, at].argmax(-1) == target).all())
                    out[it[0]] = (lp, greedy)
                    self.cache_hook.add_partial("loglikelihood", (it[1], it[2]), out[it[0]])
        return out  # type: ignore[return-value]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("compactvlm answers single-round requests (generate_until)")
