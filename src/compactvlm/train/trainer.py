"""The training loop, on HF accelerate (one process, DDP, FSDP or DeepSpeed, as ``accelerate launch`` /
``torchrun`` set up the processes).

One optimiser step = one global batch (``optim.batch_size`` samples over all processes) = ``grad_accum``
micro-batches of ``optim.per_device_batch_size`` per process. The loss of a step is the cross-entropy summed
over the answer tokens of the whole global batch divided by their number (counted over all processes before
the first backward), so the gradient does not depend on how the batch is split: two processes give the same
update as one. AdamW (``weight_decay`` 0 by default), warmup + cosine/linear/constant schedule (transformers'
``get_scheduler``), gradient clipping, bf16 autocast over fp32 weights, LLM gradient checkpointing.

Outputs in ``output_dir``: ``train_config.yaml``, ``metrics.jsonl``, ``checkpoints/step-N`` (resumable, see
``train.state``) and ``final/`` (the trained parts + config, loadable with ``load_pretrained``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import CompactVLMError
from ..model.adapters import base_llm
from ..model.build import bf16_is_fast
from ..model.init_state import mark_random
from .config import RESUME_FREE_KEYS, TrainConfig, to_plain


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    step: int
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


class NonFiniteLoss(CompactVLMError):
    pass


#: feature-cache key of the blank control image (dataset indices are >= 0)
BLANK_INDEX = -1
#: a validation-loss gap (shuffled minus real images, nats per answer token) below this reads as "blind"
BLIND_GAP = 0.02


def format_gauge(g: dict[str, float]) -> str:
    parts = [f"{c} {g[f'val_loss_{c}']:.4f} ({g[f'gap_{c}']:+.4f})" for c in ("shuffled", "blank")
             if f"val_loss_{c}" in g]
    if "image_token_norm" in g:
        parts.append(f"image-token norm {g['image_token_norm']:.1f} vs text {g['text_embed_norm']:.1f}")
    return ("; " + ", ".join(parts)) if parts else ""


def gauge_summary(real: float, g: dict[str, float], objective: str = "lm") -> str:
    """One line for the end of training: the last validation pass with real / shuffled / blank images. The
    blind / sees verdict reads the gap in nats per answer token, so it is given for the language-model objective
    only; another objective's loss (grounding: a mean squared error in the embedding space) gets the ratio of the
    shuffled images' loss to the real ones' instead."""
    gap = g.get("gap_shuffled")
    if gap is None:
        return "blindness gauge: no shuffled-image control (eval.controls off or too few validation samples)"
    if objective != "lm":
        ratio = f"{g['val_loss_shuffled'] / real:.1f}x" if real > 0 else "undefined (real-image loss 0)"
        verdict = (f"with the images shuffled the {objective} loss is {ratio} the real images' (the blind verdict, a "
                   f"{BLIND_GAP}-nat gap, is for objective=lm; the next stage's gauge gives it)")
    elif gap < BLIND_GAP:
        verdict = (f"the model does not use the image (shuffled-image gap below {BLIND_GAP}): "
                   "it answers from the text alone")
    else:
        verdict = "the model uses the image"
    return f"blindness gauge: val loss real {real:.4f}{format_gauge(g)}; {verdict}"


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run (or resume) the training ``cfg`` describes. ``callbacks`` may define ``on_step_end(trainer, step,
    metrics)``, called on every process after each optimiser step (and after its checkpoint, if any)."""
    return Trainer(cfg, callbacks).run()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.startswith("model.compressor_params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _predates() -> dict[str, Any]:
    """Values of config keys for a checkpoint written before the key existed: what that code did (a legacy value
    where it differs from today's default, e.g. ``model.image_aspect``: it resized), else today's default."""
    from ..encoders.preprocessing import LEGACY_ASPECT

    return {**_flatten(to_plain(TrainConfig())), "model.image_aspect": LEGACY_ASPECT}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Flattened keys whose value differs between a checkpoint's config and the current one (resume-free keys
    aside); keys the checkpoint predates take their ``_predates`` value."""
    a, b = _flatten(saved), _flatten(current)
    a = {**{k: v for k, v in _predates().items() if k in b}, **a}
    free = lambda k: any(k == f or k.startswith(f + ".") for f in RESUME_FREE_KEYS)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if not free(k) and a.get(k) != b.get(k))


def resolve_precision(precision: str, device: str) -> str:
    """The autocast precision a run uses: ``auto`` is bf16 where ``device`` runs bf16 matmuls natively (CUDA with
    bf16, CPUs with AMX / AVX512-BF16) and fp32 elsewhere; fp32 and bf16 are taken as asked."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def recorded_precision(out: Path, checkpoint: Path | None) -> str | None:
    """The autocast precision (``fp32`` / ``bf16``) the run in ``out`` trained with up to ``checkpoint``: the
    checkpoint's own record, else (checkpoints written before it was recorded) the last ``start`` event of the run's
    metrics.jsonl at or before the checkpoint's step; None without a checkpoint or a record, and for a folder that is
    not a readable training checkpoint (resuming it then fails with its own clear error)."""
    if checkpoint is None:
        return None
    from .state import TRAIN_STATE

    try:
        state = json.loads((Path(checkpoint) / TRAIN_STATE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("precision"):
        return state["precision"]
    from .logging import read_events

    starts = [e for e in read_events(out) if e.get("event") == "start" and e.get("precision")
              and e.get("step", 0) <= int(state.get("step", 0))]
    return starts[-1]["precision"] if starts else None


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Any] = ()):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.out = Path(cfg.output_dir)

    # ---- setup ---------------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState

        cfg = self.cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise CompactVLMError("device=cuda but no CUDA GPU is visible", "use device=cpu or device=auto")
        cpu = cfg.device == "cpu" or not torch.cuda.is_available()
        # the same process may train twice with different settings (tests, notebooks)
        if AcceleratorState._shared_state:
            AcceleratorState._reset_state()
        world = PartialState(cpu=cpu).num_processes
        per = cfg.optim.per_device_batch_size
        if cfg.optim.batch_size % (per * world):
            raise CompactVLMError(
                f"optim.batch_size={cfg.optim.batch_size} is not a multiple of per_device_batch_size={per} x "
                f"{world} processes", "adjust optim.per_device_batch_size or the number of processes")
        self.grad_accum = cfg.optim.batch_size // (per * world)
        device = "cpu" if cpu else "cuda"
        self.precision = resolve_precision(cfg.precision, device)
        was = recorded_precision(self.out, self._resume_path()) if cfg.precision == "auto" else None
        if was is not None and was != self.precision:  # a run keeps the precision it started with
            if was == "bf16" and not bf16_is_fast(device):
                raise CompactVLMError(
                    f"{self.out} is resumed with precision=auto, and the run trained in bf16, which this "
                    f"{'CPU' if cpu else 'GPU'} only emulates (no AMX / AVX512-BF16: tens of times slower than fp32)",
                    "resume it on a machine with native bf16, or finish it in fp32 on purpose: precision=fp32 "
                    "allow_config_change=precision (the run then mixes two precisions)")
            self.log_lines.append(
                f"precision auto -> {was}: the run being resumed trained in {was} (on this "
                f"{'CPU' if cpu else 'GPU'} auto would pick {self.precision}); a run keeps one precision unless set on "
                f"purpose (precision={self.precision} allow_config_change=precision)")
            self.precision = was
        elif cfg.precision == "auto":
            self.log_lines.append(f"precision auto -> {self.precision} (bf16 {'is' if self.precision == 'bf16' else 'is not'}"
                                  f" native on this {'CPU' if cpu else 'GPU'})")
        elif cfg.precision == "bf16" and not bf16_is_fast(device):
            self.log_lines.append(
                "WARNING: precision=bf16 on a device without native bf16 matmuls (no AMX / AVX512-BF16 on this CPU): "
                "bf16 is emulated and training runs tens of times slower than fp32 (0.8 vs 55 GFLOP/s on an AVX2 "
                "core); set precision=auto (bf16 only where native) or precision=fp32")
        return Accelerator(cpu=cpu, mixed_precision="bf16" if self.precision == "bf16" else "no",
                           gradient_accumulation_steps=self.grad_accum)

    def _claim_output(self, create: bool = False) -> None:
        """Make sure ``output_dir`` is ours (missing, empty, marked as a training run, or a run written before
        markers existed), hold its lock (``.compactvlm.lock``: a second process fails at once) and remove the temp
        folders of a checkpoint write that was killed. Without ``create`` a missing folder is left for later (a
        run that fails its input checks creates nothing)."""
        from filelock import FileLock, Timeout

        from ..model.checkpoint import CONFIG_NAME, clean_stale_writes
        from ..model.manifest import marker_kind, refuse_foreign, write_marker
        from .state import CHECKPOINTS, LOCK, list_checkpoints

        out = self.out
        if getattr(self, "_lock", None) is not None:
            return
        if out.exists() and not out.is_dir():
            raise CompactVLMError(f"output_dir {out} is a file, not a folder; nothing was changed",
                                  "set output_dir to a new folder (or a previous run's folder to resume it)")
        if not out.exists() and not create:
            return
        if out.is_dir() and any(out.iterdir()):
            kind = marker_kind(out)
            legacy = kind is None and ((out / "train_config.yaml").is_file() or bool(list_checkpoints(out))
                                       or (out / "final" / CONFIG_NAME).is_file())
            if kind not in (None, "training-run") or (kind is None and not legacy):
                raise refuse_foreign(out, "training-run", "output_dir", kind)
            from ..model.checkpoint import check_replaceable

            check_replaceable(out / "final", "output_dir")  # found now, not when the run ends
        out.mkdir(parents=True, exist_ok=True)
        if marker_kind(out) is None:
            write_marker(out, "training-run")
        lock = FileLock(str(out / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise CompactVLMError(f"another training process is writing to {out} (it holds {out / LOCK})",
                                  "wait for it to finish, or train into another output_dir") from None
        self._lock = lock
        for d in clean_stale_writes(out / CHECKPOINTS) + clean_stale_writes(out, ["final"]):
            self.log_lines.append(f"removed {d.name}, left by a checkpoint write that was interrupted")

    def _release_output(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def _resume_path(self) -> Path | None:
        from .state import latest_checkpoint, list_checkpoints

        r = self.cfg.resume
        if r == "never":
            if list_checkpoints(self.out):
                raise CompactVLMError(f"{self.out} already holds checkpoints and resume=never",
                                      "use a new output_dir, delete the old run, or set resume=auto")
            return None
        if r == "auto":
            return latest_checkpoint(self.out)
        p = Path(r)
        if not p.is_dir():
            raise CompactVLMError(f"resume checkpoint {p} does not exist", "pass OUT/checkpoints/step-N, auto or never")
        return p

    def _init_from(self, vlm) -> None:
        from ..model.checkpoint import load_weights, read_config

        src = self.cfg.init.from_
        if not src:
            return
        mc, _ = read_config(src)
        want = self.cfg.model
        for key in ("encoder", "llm", "compressor", "image_size"):
            if getattr(mc, key) != getattr(want, key):
                raise CompactVLMError(
                    f"init.from {src} was trained with {key}={getattr(mc, key)!r}, this run uses {getattr(want, key)!r}",
                    f"set model.{key}={getattr(mc, key)} or start from a matching checkpoint")
        names = [n for n, _ in vlm.named_parameters()] + [n for n, _ in vlm.named_buffers()]
        for p in self.cfg.init.new_modules:
            if not any(n == p or n.startswith(p + ".") for n in names):
                raise CompactVLMError(f"init.new_modules entry {p!r} names no weight of the model",
                                      "use module paths such as compressor.grouping, compressor.semantic_tokens")
        kept = load_weights(vlm, src, new_modules=self.cfg.init.new_modules, merge_lora=True)
        self.log_lines.append(f"init from {src}" + (f"; new (not in it): {', '.join(kept)}" if kept else ""))

    def _datasets(self, vlm):
        from ..data.llava import LlavaDataset

        d = self.cfg.data
        common = dict(tokenizer=vlm.tokenizer, num_image_tokens=vlm.num_image_tokens(), processor=vlm.processor,
                      image_root=d.image_root, system_prompt=vlm.system_prompt, max_length=d.max_length,
                      text_only=d.text_only, given_masks=vlm.compressor.wants_given_masks,
                      objects=self.cfg.objective == "grounding")
        train = LlavaDataset(d.train, max_samples=d.max_samples, **common)
        val = LlavaDataset(d.val, max_samples=d.max_val_samples, **common) if d.val else None
        return train, val

    def setup(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from ..model.build import build_model
        from .logging import RunLogger
        from .objective import FeatureCache, FeatureStore, TrainingModel, cached_layers, check_cacheable, store_tag
        from .sampler import GlobalBatchSampler
        from .stages import apply_stage, format_summary

        cfg = self.cfg
        self.log_lines: list[str] = []
        from ..runtime import set_threads

        set_threads(cfg.threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        acc = self.accelerator = self._accelerator()
        self.main = acc.is_main_process
        self.sharded = acc.distributed_type.value in ("FSDP", "DEEPSPEED")
        if self.sharded and (cfg.checkpoint.every_steps or cfg.checkpoint.every_minutes):
            raise CompactVLMError(
                f"resumable checkpoints are implemented for single-process and DDP runs, not {acc.distributed_type.value}",
                "set checkpoint.every_steps=0 and checkpoint.every_minutes=0 (the final model is still saved) or "
                "launch with a DDP accelerate config")
        if self.main:
            self._claim_output()  # a foreign folder is refused; a second run into it fails here, at once
        resume = self._resume_path()
        for key in ("train", "val"):  # before the (slow) model load
            f = getattr(cfg.data, key)
            if key == "train" and not f:
                raise CompactVLMError("data.train is not set", "set data.train=PATH of a LLaVA-format JSON")
            if f and not Path(f).is_file():
                raise CompactVLMError(f"data.{key} file not found: {f}",
                                      "build SceneQA with `compactvlm data build sceneqa --out DIR` or fix the path")
            if f:
                from ..data.llava import read_llava_json

                read_llava_json(f)  # encoding, JSON and record structure: errors before the model load
        set_seed(cfg.seed)
        vlm = build_model(cfg.model, progress=self.main)
        self._init_from(vlm)
        if cfg.reduce.name:  # before the datasets: they place the reduction's number of image tokens
            vlm.set_budget(cfg.reduce.budget, reduce=cfg.reduce.name, **cfg.reduce.params)
            self.log_lines.append(f"training with reduction {vlm.reduction.describe()}: {vlm.num_image_tokens()} vision "
                                  "tokens reach the LLM (set it again at test time)")
        groups, rows = apply_stage(vlm, cfg.stage, cfg.optim.lr)
        self.log_lines.append("stage " + cfg.stage.name + "\n" + format_summary(rows))
        if cfg.gradient_checkpointing:
            base_llm(vlm.llm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(vlm.llm, "config"):
            vlm.llm.config.use_cache = False
        self.cache = self.val_cache = None
        if cfg.cache_features:
            why = check_cacheable(vlm)
            big = vlm.compressor.extra_tokens() is not None  # VisToG: every block up to the one read
            if why:
                self.log_lines.append(f"cache_features off: {why}")
            elif big and not cfg.feature_cache_dir:
                self.log_lines.append("cache_features off: the extra tokens read every encoder block, too much to hold "
                                      "in memory for every image; set feature_cache_dir to cache them on disk")
            else:
                layers = cached_layers(vlm)
                store = None
                if cfg.feature_cache_dir:
                    store = FeatureStore(cfg.feature_cache_dir, store_tag(vlm, layers, self.precision))
                    self.log_lines.append(f"encoder features on disk: {store.dir}")
                # VisToG's blocks: on disk only, in the autocast dtype
                kw = dict(memory=not big, dtype=torch.bfloat16 if big and self.precision == "bf16" else None)
                self.cache, self.val_cache = FeatureCache(layers, store, **kw), FeatureCache(layers, store, **kw)
        if cfg.logits == "labels" and getattr(getattr(vlm.llm, "config", None), "final_logit_softcapping", None):
            raise CompactVLMError("this LLM post-processes its logits (softcapping)", "set logits=all")
        self.vlm = vlm
        self.train_ds, self.val_ds = self._datasets(vlm)

        o = cfg.optim
        self.sampler = GlobalBatchSampler(len(self.train_ds), o.batch_size, o.per_device_batch_size,
                                          acc.num_processes, acc.process_index, cfg.seed, cfg.data.shuffle)
        self.total_steps = o.max_steps if o.max_steps > 0 else o.epochs * self.sampler.steps_per_epoch
        self.sampler.total_steps = self.total_steps
        dropped = len(self.train_ds) - self.sampler.steps_per_epoch * o.batch_size
        if dropped:
            self.log_lines.append(f"{dropped} sample(s) per epoch do not fill a global batch and are skipped")

        tm = TrainingModel(vlm, logits=cfg.logits, objective=cfg.objective, background=cfg.grounding_background,
                           place=cfg.grounding_place)
        self.param_names = [n for n, p in tm.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.scheduler = get_scheduler(o.schedule, opt, num_warmup_steps=cfg.warmup_steps(self.total_steps),
                                       num_training_steps=self.total_steps)
        if getattr(acc.state, "deepspeed_plugin", None) is not None:  # no prepared dataloader to infer it from
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = o.per_device_batch_size
        self.model, self.optimizer = acc.prepare(tm, opt)
        self.train_params = [p for p in self.model.parameters() if p.requires_grad]
        self.step = 0
        self.val_losses: list[tuple[int, float]] = []
        self.val_controls: list[tuple[int, dict[str, float]]] = []
        if resume is not None:
            self._resume(resume)
        self.sampler.start_step = self.step
        self.logger = RunLogger(self.out, self.main, self.total_steps, self.step, cfg.logging.progress,
                                cfg.logging.tensorboard)
        if self.main:
            import yaml

            self._claim_output(create=True)
            (self.out / "train_config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
        for line in self.log_lines:
            self.logger.info(line)
        self.logger.info(
            f"{len(self.train_ds)} train samples, {len(self.val_ds) if self.val_ds else 0} val; "
            f"{acc.num_processes} process(es) x {o.per_device_batch_size} x {self.grad_accum} accumulation = global "
            f"batch {o.batch_size}; {self.total_steps} steps ({self.sampler.steps_per_epoch}/epoch); "
            f"{vlm.num_image_tokens()} image tokens; precision {self.precision}")
        self.logger.log("start", self.step, total_steps=self.total_steps, processes=acc.num_processes,
                        grad_accum=self.grad_accum, image_tokens=vlm.num_image_tokens(), precision=self.precision,
                        train_samples=len(self.train_ds), resumed_from=str(resume) if resume else None)

    def _resume(self, path: Path) -> None:
        from ..model.checkpoint import load_weights
        from .state import join_optimizer_state, read_checkpoint_state, set_rng_state

        meta, state, tensors = read_checkpoint_state(path)
        saved = meta.get("train", {})
        diff = config_differences(saved, to_plain(self.cfg))
        allowed = list(self.cfg.allow_config_change or [])
        changed = [k for k in diff if k in allowed]
        diff = [k for k in diff if k not in allowed]
        if diff:
            from .config import changeable_on_resume

            can = [k for k in diff if changeable_on_resume(k)]
            raise CompactVLMError(
                f"checkpoint {path} was written with a different config ({', '.join(diff[:8])})",
                "resume with the same config, or start a new run (new output_dir, or resume=never in an empty one)"
                + (f"; to resume with the new value on purpose add allow_config_change={','.join(can)}" if can else "")
                + ("; a run started before model.image_aspect existed resumes with model.image_aspect=resize"
                   if "model.image_aspect" in diff else ""))
        if state["param_names"] != self.param_names:
            raise CompactVLMError(f"checkpoint {path} trains different parameters than this run",
                                  "resume with the stage it was written with")
        load_weights(self.vlm, path, merge_lora=False)
        fresh = [dict(g) for g in self.optimizer.param_groups]  # this config's hyperparameters
        self.optimizer.load_state_dict(join_optimizer_state(tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if changed:
            self._apply_changed(changed, fresh)
            flat_old = _flatten(saved)
            flat_new = _flatten(to_plain(self.cfg))
            self.log_lines.append("resumed with changed config (allow_config_change): " + ", ".join(
                f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in changed))
        self.step = int(state["step"])
        self.val_losses = [tuple(v) for v in state.get("metrics", {}).get("val_losses", [])]
        self.val_controls = [tuple(v) for v in state.get("metrics", {}).get("val_controls", [])]
        rngs = state.get("rng", [])
        rank = self.accelerator.process_index
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        self.log_lines.append(f"resumed from {path} at step {self.step}")

    def _apply_changed(self, changed: list[str], fresh: list[dict]) -> None:
        """Put this config's optimiser hyperparameters into the resumed optimiser and scheduler (learning rates:
        the scheduler continues its schedule from the new base rates)."""
        groups = self.optimizer.param_groups
        if any(k.endswith(".lr") for k in changed):
            bases = [f["lr"] for f in fresh]
            self.scheduler.base_lrs = list(bases)
            lambdas = getattr(self.scheduler, "lr_lambdas", None)
            for i, g in enumerate(groups):
                g["initial_lr"] = bases[i]
                g["lr"] = bases[i] * (lambdas[i](self.scheduler.last_epoch) if lambdas else 1.0)
            self.scheduler._last_lr = [g["lr"] for g in groups]
        for key, field_ in (("optim.eps", "eps"), ("optim.weight_decay", "weight_decay"), ("optim.betas", "betas")):
            if key in changed:
                for g, f in zip(groups, fresh):
                    g[field_] = f[field_]

    # ---- steps ---------------------------------------------------------------------------------------
    def _text_inputs(self, batch: dict) -> dict:
        dev = self.accelerator.device
        x = {k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels", "position_ids")}
        if "objects" in batch:  # grounding targets stay with their sample (a shuffled control swaps only the image)
            x["objects"] = batch["objects"]
        return x

    def _inputs(self, batch: dict, cache) -> dict:
        dev = self.accelerator.device
        x = self._text_inputs(batch)
        if cache is not None:
            x["features"] = cache.features(self.vlm, batch["index"], batch["pixel_values"], dev)
        else:
            x["pixel_values"] = batch["pixel_values"].to(dev)
        if "masks" in batch:
            x["extra_state"] = {"masks": [m.to(dev) for m in batch["masks"]]}
        return x

    def _reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def train_step(self, micro: list[dict]) -> dict[str, float]:
        from ..data.llava import num_label_tokens

        acc = self.accelerator
        if self.cfg.objective == "grounding":
            from .grounding import num_objects

            def count(b):
                return sum(num_objects(o) for o in b["objects"])
        else:
            count = (lambda b: num_label_tokens(b["labels"]))  # noqa: E731
        n_lab, n_tok = self._reduce([sum(count(b) for b in micro),
                                     sum(int(b["attention_mask"].sum()) for b in micro)])
        scale = acc.num_processes * self.grad_accum / max(n_lab, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        self.model.train()
        if not any(p.requires_grad for p in self.vlm.encoder.parameters()):
            self.vlm.encoder.eval()
        for b in micro:
            with acc.accumulate(self.model):
                x = self._inputs(b, self.cache)
                with acc.autocast():
                    ls, _ = self.model(**x)
                acc.backward(ls * scale)
                loss_sum += ls.detach().double().cpu()
        assert acc.sync_gradients, "micro-batches out of step with gradient accumulation"
        (total,) = self._reduce([float(loss_sum)])
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm > 0:
            gnorm = acc.clip_grad_norm_(self.train_params, max_norm)
        else:
            gnorm = torch.nn.utils.clip_grad_norm_(self.train_params, float("inf"))
        loss = total / max(n_lab, 1.0)
        gnorm = float("nan") if gnorm is None else float(gnorm)  # None: DeepSpeed clips inside its engine
        if not math.isfinite(loss) or (not math.isfinite(gnorm) and acc.distributed_type.value != "DEEPSPEED"):
            return {"loss": loss, "grad_norm": gnorm, "finite": 0.0}
        self.lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}  # this step's
        self.optimizer.step()
        mark_random(self.vlm.compressor, False)  # trained from now on (serve / viz / warnings read this)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "grad_norm": gnorm, "tokens": n_tok, "label_tokens": n_lab, "finite": 1.0}

    def _control_inputs(self, b: dict, control: str, cache) -> dict | None:
        """The batch's model inputs with each image replaced: ``shuffled`` by the image of the validation sample
        ``(i + N//2) mod N`` (a fixed permutation without fixed points), ``blank`` by a uniform image of the
        processor's mean colour (all zeros after normalisation). None if the control cannot be formed."""
        x = self._text_inputs(b)  # the images come from the control below
        idx = [int(i) for i in b["index"]]
        n = len(self.val_ds)
        dev = self.accelerator.device
        if control == "shuffled":
            if n < 2:
                return None
            other = [(i + n // 2) % n for i in idx]
            need_items = cache is None or not all(j in cache for j in other) or "masks" in b
            items = [self.val_ds[j] for j in other] if need_items else []
            pix = torch.stack([it["pixel_values"] for it in items]) if items else b["pixel_values"]  # (B, 3, S, S)
            if cache is not None:
                x["features"] = cache.features(self.vlm, torch.tensor(other), pix, dev)
            else:
                x["pixel_values"] = pix.to(dev)
            if "masks" in b:  # a given-mask compressor: the masks travel with their image
                x["extra_state"] = {"masks": [it["masks"].to(dev) for it in items]}
            return x
        if control == "blank":
            if "masks" in b:
                return None  # the given masks would still tell where the objects are
            pix = torch.zeros_like(b["pixel_values"])  # (B, 3, S, S): the mean colour, normalised
            if cache is not None:
                x["features"] = cache.features(self.vlm, torch.full((len(idx),), BLANK_INDEX), pix, dev)
            else:
                x["pixel_values"] = pix.to(dev)
            return x
        raise ValueError(control)

    @torch.no_grad()
    def evaluate(self, control: str | None = None) -> float | None:
        """Mean validation loss per answer token; with ``control`` (``shuffled`` / ``blank``) the same samples
        with their images replaced (see ``_control_inputs``): the blindness gauge. None when there is no
        validation set or the control cannot be formed for this model."""
        from ..data.llava import collate_llava

        if self.val_ds is None:
            return None
        acc = self.accelerator
        tm = acc.unwrap_model(self.model)
        was = tm.training
        tm.eval()
        per = self.cfg.eval.per_device_batch_size or self.cfg.optim.per_device_batch_size
        mine = list(range(acc.process_index, len(self.val_ds), acc.num_processes))
        batches = [mine[i : i + per] for i in range(0, len(mine), per)]
        loader = torch.utils.data.DataLoader(self.val_ds, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                                             collate_fn=partial(collate_llava, pad_id=self.vlm.tokenizer.pad_token_id,
                                                                pad_to_multiple_of=self.cfg.data.pad_to_multiple_of),
                                             generator=torch.Generator())  # leaves the global RNG alone
        s = n = 0.0
        for b in loader:
            x = self._inputs(b, self.val_cache) if control is None else self._control_inputs(b, control, self.val_cache)
            if x is None:
                tm.train(was)
                return None
            with acc.autocast():
                ls, cnt = tm(**x)
            s += float(ls)
            n += float(cnt)
        tm.train(was)
        s, n = self._reduce([s, n])
        return s / max(n, 1.0)

    @torch.no_grad()
    def token_norms(self) -> dict[str, float] | None:
        """Mean L2 norm of the vision tokens the LLM receives and of the text-token embeddings, on the first
        validation batch (vision tokens far larger than text embeddings are a known way to drown the text)."""
        from ..data.llava import collate_llava
        from ..model.prompting import IMAGE_TOKEN_ID

        if self.val_ds is None or len(self.val_ds) == 0:
            return None
        tm = self.accelerator.unwrap_model(self.model)
        per = self.cfg.eval.per_device_batch_size or self.cfg.optim.per_device_batch_size
        b = collate_llava([self.val_ds[i] for i in range(min(per, len(self.val_ds)))],
                          pad_id=self.vlm.tokenizer.pad_token_id, pad_to_multiple_of=self.cfg.data.pad_to_multiple_of)
        x = self._inputs(b, self.val_cache)
        with self.accelerator.autocast():
            img = tm.image_tokens(x.get("pixel_values"), x.get("features"), x.get("extra_state"))  # (B, M, D)
        ids = x["input_ids"]
        text = (ids != IMAGE_TOKEN_ID) & x["attention_mask"].bool()  # (B, T)
        emb = self.vlm.llm.get_input_embeddings()(ids[text])  # (N, D)
        return {"image_token_norm": float(img.float().norm(dim=-1).mean()),
                "text_embed_norm": float(emb.float().norm(dim=-1).mean())}

    def _rng_states(self) -> list[dict]:
        from accelerate.utils import gather_object

        from .state import rng_state

        st = rng_state()
        return gather_object([st]) if self.accelerator.num_processes > 1 else [st]

    def _checkpoint_due(self) -> bool:
        """After an optimiser step: save a resumable checkpoint now? Every ``every_steps`` steps, and once
        ``every_minutes`` have passed since the last save; at the last step when either is on. The time trigger reads
        the main process's clock and every process follows it (a save gathers from all of them)."""
        ck = self.cfg.checkpoint
        if not (ck.every_steps or ck.every_minutes):
            return False
        if self.step == self.total_steps or (ck.every_steps and self.step % ck.every_steps == 0):
            return True
        if not ck.every_minutes:
            return False
        due = time.perf_counter() - self._last_save >= 60.0 * ck.every_minutes
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            flag = torch.tensor([1.0 if due else 0.0], device=self.accelerator.device)
            due = bool(broadcast(flag, from_process=0).item())
        return due

    def save(self, metrics: dict) -> Path | None:
        from .state import checkpoint_dir, prune_checkpoints, save_checkpoint

        acc = self.accelerator
        rngs = self._rng_states()
        path = checkpoint_dir(self.out, self.step)
        if self.main:
            epoch, pos = self.sampler.position(self.step)
            save_checkpoint(acc.unwrap_model(self.model).vlm, path, step=self.step, train_config=to_plain(self.cfg),
                            optimizer=self.optimizer, scheduler=self.scheduler, param_names=self.param_names,
                            rng_states=rngs, position={"epoch": epoch, "step_in_epoch": pos},
                            metrics={**metrics, "val_losses": self.val_losses, "val_controls": self.val_controls},
                            save_frozen=self.cfg.checkpoint.save_frozen, precision=self.precision)
            prune_checkpoints(self.out, self.cfg.checkpoint.keep_last)
            self.logger.log("checkpoint", self.step, path=str(path))
        acc.wait_for_everyone()
        self._last_save = time.perf_counter()
        return path

    def save_final(self) -> Path:
        from ..model.checkpoint import save_pretrained

        final = self.out / "final"
        full = None
        if self.sharded:  # every process takes part in gathering the sharded weights
            full = {k[len("vlm."):]: v for k, v in self.accelerator.get_state_dict(self.model).items()}
        if self.main:
            save_pretrained(self.accelerator.unwrap_model(self.model).vlm, final,
                            save_llm=self.cfg.checkpoint.save_frozen, trainable_only=True, state_dict=full,
                            extra={"train": to_plain(self.cfg), "step": self.step, "val_losses": self.val_losses,
                                   "val_controls": self.val_controls})
        self.accelerator.wait_for_everyone()
        return final

    def _eval_and_log(self) -> float | None:
        t = time.perf_counter()
        v = self.evaluate()
        if v is not None:
            self.val_losses.append((self.step, v))
            gauge: dict[str, float] = {}
            for c in self.cfg.eval.controls:
                cv = self.evaluate(c)
                if cv is not None:
                    gauge[f"val_loss_{c}"] = cv
                    gauge[f"gap_{c}"] = cv - v
            gauge.update(self.token_norms() or {})
            self.val_controls.append((self.step, gauge))
            self.logger.log("eval", self.step, val_loss=v, **gauge, seconds=round(time.perf_counter() - t, 3))
            self.logger.info(f"step {self.step}: val loss {v:.4f}" + format_gauge(gauge))
        return v

    # ---- loop ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from ..data.llava import collate_llava

        try:
            self.setup()
        except BaseException:
            self._release_output()
            raise
        cfg = self.cfg
        try:
            if cfg.eval.at_start and self.step == 0:
                self._eval_and_log()
            loader = torch.utils.data.DataLoader(
                self.train_ds, batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                collate_fn=partial(collate_llava, pad_id=self.vlm.tokenizer.pad_token_id,
                                                                pad_to_multiple_of=self.cfg.data.pad_to_multiple_of),
                generator=torch.Generator())  # its own seed draw: a resumed run's global RNG stays in step
            batches = iter(loader)
            last: dict[str, Any] = {}
            t_prev = self._last_save = time.perf_counter()
            while self.step < self.total_steps:
                micro = [next(batches) for _ in range(self.grad_accum)]
                m = self.train_step(micro)
                if not m.pop("finite"):
                    self.logger.log("nan", self.step + 1, **m)
                    from .state import latest_checkpoint

                    good = latest_checkpoint(self.out)
                    raise NonFiniteLoss(
                        f"loss or gradient became non-finite at step {self.step + 1} (loss {m['loss']}, grad norm "
                        f"{m['grad_norm']}); stopped without saving. Last good checkpoint: {good or 'none'}",
                        "lower the learning rate (or use precision=fp32, a smaller optim.max_grad_norm, check the "
                        "data), then continue from the last good checkpoint with e.g. `optim.lr=NEW resume=auto "
                        "allow_config_change=optim.lr`" if good else
                        "lower optim.lr, use precision=fp32 or a smaller optim.max_grad_norm, check the data, and "
                        "start again (no checkpoint was written yet: set checkpoint.every_steps to keep some)")
                self.step += 1
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                epoch, _ = self.sampler.position(self.step - 1)
                lrs = self.lrs
                last = {"loss": m["loss"], "grad_norm": m["grad_norm"], "lr": lrs, "epoch": epoch,
                        "sec_per_step": dt, "tokens_per_sec": m["tokens"] / dt,
                        "samples_per_sec": cfg.optim.batch_size / dt, "tokens": m["tokens"],
                        "label_tokens": m["label_tokens"]}
                if self.step % cfg.logging.every_steps == 0 or self.step == self.total_steps:
                    self.logger.log("train", self.step, **last)
                self.logger.progress(self.step, m["loss"], next(iter(lrs.values())), last["tokens_per_sec"])
                ev = cfg.eval.every_steps
                if ev and self.step % ev == 0 and self.step < self.total_steps:
                    self._eval_and_log()
                if self._checkpoint_due():
                    self.save(last)
                for cb in self.callbacks:
                    fn = getattr(cb, "on_step_end", None)
                    if fn:
                        fn(self, self.step, last)
                t_prev = time.perf_counter()  # step time excludes evaluation and checkpointing
            if cfg.eval.at_end and (not self.val_losses or self.val_losses[-1][0] != self.step):
                self._eval_and_log()
            final = self.save_final()
            self.logger.log("end", self.step, final=str(final), val_losses=self.val_losses,
                            val_controls=self.val_controls)
            self.logger.info(f"done: {self.step} steps; model in {final}")
            store = self.cache.store if self.cache is not None else None
            if store is not None:
                self.logger.info(f"encoder features: {store.hits} image(s) read from {store.dir}, "
                                 f"{store.written} encoded and written there")
            if self.val_controls:
                self.logger.info(gauge_summary(self.val_losses[-1][1], self.val_controls[-1][1], self.cfg.objective))
            return TrainResult(self.out, final, self.step, list(self.val_losses), last)
        finally:
            self.logger.close()
            self._release_output()
