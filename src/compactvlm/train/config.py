"""``TrainConfig``: everything one training run needs, typed, loaded from YAML with ``a.b=c`` overrides.

    cfg = load_train_config("configs/train/cpu_stage1.yaml", ["optim.lr=5e-4", "data.max_samples=64"])

``model:`` may be a mapping (``ModelConfig`` fields), the path of a model YAML, or a mapping with ``_base_: PATH``
plus keys that change it (``model: {_base_: ../model/stf_k2e1.yaml, system_prompt: ""}``); paths are relative to
the YAML file that names them. A train YAML may itself start from another one (top-level ``_base_``); a child
that names a model file replaces the parent's model, plain keys are merged into it. Overrides
such as ``model.compressor_params.k=4`` apply last.
``init.from`` is spelled ``from`` in files and overrides (stored as ``InitConfig.from_``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import _deep_merge, apply_overrides, from_dict, read_file
from ..errors import CompactVLMError
from ..model.build import ModelConfig

Mode = Literal["frozen", "full", "lora"]
MODES = ("frozen", "full", "lora")


@dataclass
class DataConfig:
    train: str = ""  # LLaVA JSON/JSONL
    val: str | None = None  # held-out split for the validation loss
    image_root: str | None = None  # default: the folder of each JSON file
    max_samples: int | None = None
    max_val_samples: int | None = None
    max_length: int | None = 2048  # tokens, image placeholders included (LLaVA's model_max_length)
    num_workers: int = 0
    text_only: Literal["error", "skip"] = "error"
    shuffle: bool = True
    # batches are right-padded to a multiple of this many tokens: on CPUs, oneDNN's bf16 matmuls keep per-shape
    # kernels and weight copies that are never freed, so every new sequence length costs memory (a stage-2 run
    # with free lengths grew by ~40 MB per step); a few fixed lengths bound it. Padding is masked (no loss change).
    pad_to_multiple_of: int | None = 64

    def validate(self) -> None:
        for k in ("max_samples", "max_val_samples", "max_length"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise CompactVLMError(f"data.{k} must be >= 1 (or null), got {v}", "use a positive number or null")
        if self.num_workers < 0:
            raise CompactVLMError(f"data.num_workers must be >= 0, got {self.num_workers}", "use 0 for no workers")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise CompactVLMError(f"data.pad_to_multiple_of must be >= 1 (or null), got {self.pad_to_multiple_of}",
                                  "use e.g. 64, or null to pad each batch to its longest sample only")


@dataclass
class ModuleSpec:
    mode: Mode = "frozen"
    lr: float | None = None  # default: optim.lr


@dataclass
class LoraConfig:
    """peft LoRA on the LLM (stage.modules.llm: lora)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise CompactVLMError(f"stage.lora has a bad value: {self}",
                                  "use r >= 1, alpha > 0, 0 <= dropout < 1 and a non-empty target_modules list")


@dataclass
class StageConfig:
    """Trainability per module prefix of the CompactVLM (``encoder``, ``compressor``, ``compressor.grouping``,
    ``llm``, ...): each ``frozen | full | lora`` (string) or ``{mode: ..., lr: ...}``. The longest matching prefix
    decides for every parameter; parameters no prefix covers are frozen."""

    name: str = "stage1"
    modules: dict[str, ModuleSpec | str] = field(
        default_factory=lambda: {"encoder": "frozen", "compressor": "full", "llm": "frozen"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        norm: dict[str, ModuleSpec] = {}
        for prefix, spec in self.modules.items():
            if isinstance(spec, str):
                if spec not in MODES:
                    raise CompactVLMError(f"stage.modules.{prefix}: {spec!r} is not one of {list(MODES)}",
                                          "write frozen, full or lora (or {mode: full, lr: 1e-4})")
                spec = ModuleSpec(mode=spec)
            if spec.lr is not None and not spec.lr > 0:
                raise CompactVLMError(f"stage.modules.{prefix}.lr must be > 0, got {spec.lr}", "use e.g. 2e-5")
            if spec.mode == "lora" and prefix != "llm":
                raise CompactVLMError(f"stage.modules.{prefix}: lora is only supported on the whole LLM",
                                      "write `llm: lora` (peft adapters on stage.lora.target_modules)")
            norm[prefix] = spec
        self.modules = norm

    def specs(self) -> dict[str, ModuleSpec]:
        return {k: (ModuleSpec(mode=v) if isinstance(v, str) else v) for k, v in self.modules.items()}


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0  # the papers: Adam without weight decay
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 256  # global: samples per optimiser step over all processes
    per_device_batch_size: int = 16  # micro-batch; gradient accumulation = batch_size / (this * processes)
    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many optimiser steps (overrides epochs)
    max_grad_norm: float = 1.0  # <= 0: no clipping

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise CompactVLMError(f"optim.betas must be two numbers in [0, 1), got {self.betas}", "use [0.9, 0.999]")
        if not self.lr > 0:
            raise CompactVLMError(f"optim.lr must be > 0, got {self.lr}", "use e.g. 1e-3 (stage 1) or 2e-5 (stage 2)")
        if self.batch_size < 1 or self.per_device_batch_size < 1:
            raise CompactVLMError("optim.batch_size and optim.per_device_batch_size must be >= 1", "use e.g. 256 and 16")
        if self.batch_size % self.per_device_batch_size:
            raise CompactVLMError(
                f"optim.batch_size={self.batch_size} is not a multiple of optim.per_device_batch_size="
                f"{self.per_device_batch_size}", "pick a per-device batch that divides the global batch")
        if not 0 <= self.warmup_ratio < 1:
            raise CompactVLMError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}", "use 0.03")
        if self.epochs < 1 and self.max_steps < 1:
            raise CompactVLMError("optim.epochs and optim.max_steps are both < 1", "set optim.epochs=1 or optim.max_steps=N")
        if not math.isfinite(self.lr):
            raise CompactVLMError(f"optim.lr must be a finite number, got {self.lr}", "use e.g. 1e-3")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise CompactVLMError(f"optim.eps must be > 0, got {self.eps}", "use 1e-8 (AdamW's default)")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise CompactVLMError(f"optim.weight_decay must be >= 0, got {self.weight_decay}",
                                  "use 0 (the papers) or a small positive value such as 0.01")
        if not math.isfinite(self.max_grad_norm):
            raise CompactVLMError(f"optim.max_grad_norm must be a finite number, got {self.max_grad_norm}",
                                  "use 1.0, or 0 for no clipping")
        if self.epochs < 0 or self.max_steps < 0:
            raise CompactVLMError(f"optim.epochs and optim.max_steps must be >= 0, got {self.epochs} and "
                                  f"{self.max_steps}", "use e.g. optim.epochs=1 or optim.max_steps=100")


@dataclass
class InitConfig:
    """Start from another run's checkpoint (stage 2 from stage 1). Parameters of the new model under one of
    ``new_modules`` (prefixes such as ``compressor.grouping``) may be absent from it; any other missing or any
    unexpected weight is an error."""

    from_: str | None = None
    new_modules: list[str] = field(default_factory=list)


@dataclass
class ReduceConfig:
    """A training-free reduction (``registry.REDUCTIONS``: ``name``, its ``budget`` and options ``params``) active while
    this run trains, so that the LLM and the compressor learn on the tokens it keeps instead of meeting them only at
    test time (study v2's moonshot rows: the reference trained with DART at 16 tokens). Only reductions that run
    before the LLM (``in_llm`` false) can be trained through: the kept tokens are a gather of the compressor's
    outputs, so gradients reach the compressor through them. The saved model is the compressor's alone (a reduction
    has no weights): set the same reduction again at test time (``--reduce NAME --budget N``)."""

    name: str | None = None
    budget: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.name is None:
            if self.budget is not None or self.params:
                raise CompactVLMError("reduce.budget / reduce.params are set but reduce.name is not",
                                      "set reduce.name (e.g. reduce.name=dart), or drop them")
            return
        from ..registry import REDUCTIONS

        cls = REDUCTIONS.get(self.name)  # an unknown name: an error listing the reductions
        if cls.in_llm:
            before = [n for n in REDUCTIONS.names() if not REDUCTIONS.get(n).in_llm]
            raise CompactVLMError(f"reduction {self.name!r} prunes inside the LLM; training through it is not supported",
                                  f"train with a reduction that runs before the LLM ({', '.join(before)}), or apply "
                                  "it at test time only")
        if self.budget is None:
            raise CompactVLMError(f"reduce.name={self.name} needs a token budget", "set e.g. reduce.budget=16")


@dataclass
class EvalConfig:
    every_steps: int = 0  # validation loss every N optimiser steps (0: only at start/end)
    at_start: bool = True
    at_end: bool = True
    per_device_batch_size: int | None = None  # default: optim.per_device_batch_size
    # blindness gauge: each validation pass also computes the loss with every sample's image replaced by another
    # sample's image ("shuffled", a fixed permutation without fixed points) and by a blank image ("blank")
    controls: list[str] = field(default_factory=lambda: ["shuffled", "blank"])

    def validate(self) -> None:
        bad = [c for c in self.controls if c not in ("shuffled", "blank")]
        if bad or len(set(self.controls)) != len(self.controls):
            raise CompactVLMError(f"eval.controls must be distinct entries of [shuffled, blank], got {self.controls}",
                                  "write e.g. eval.controls=[shuffled,blank] or eval.controls=[] to switch them off")
        if self.every_steps < 0:
            raise CompactVLMError(f"eval.every_steps must be >= 0, got {self.every_steps}", "use 0 (start/end only) or N")
        if self.per_device_batch_size is not None and self.per_device_batch_size < 1:
            raise CompactVLMError(f"eval.per_device_batch_size must be >= 1 (or null), got {self.per_device_batch_size}",
                                  "use e.g. 16, or null for optim.per_device_batch_size")


@dataclass
class LoggingConfig:
    every_steps: int = 1
    progress: bool = True  # tqdm bar with loss / lr / tok/s
    tensorboard: bool = False  # needs the `tensorboard` package

    def validate(self) -> None:
        if self.every_steps < 1:
            raise CompactVLMError(f"logging.every_steps must be >= 1, got {self.every_steps}",
                                  "use 1 to log every optimiser step, or N to log every N-th")


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only the final model
    # also save once this many minutes have passed since the last save (or the start): bounds the work a killed run
    # loses by wall-clock time, whatever a step costs (0: off). Either trigger saves; both are resume-free.
    every_minutes: float = 0.0
    keep_last: int = 2
    save_frozen: bool = False  # also store frozen LLM weights (default: only trainable parts)

    def validate(self) -> None:
        if self.every_steps < 0 or self.keep_last < 0:
            raise CompactVLMError(f"checkpoint.every_steps and checkpoint.keep_last must be >= 0, got "
                                  f"{self.every_steps} and {self.keep_last}", "use e.g. every_steps=500 keep_last=2")
        if not self.every_minutes >= 0:  # also refuses NaN
            raise CompactVLMError(f"checkpoint.every_minutes must be >= 0, got {self.every_minutes}",
                                  "use e.g. every_minutes=5 (0 turns the time trigger off)")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # a training-free reduction active during training (none by default: reductions are a test-time choice)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    output_dir: str = "runs/train"
    seed: int = 0
    # bf16 = autocast over fp32 master weights; auto = bf16 where the device runs it natively (CUDA, CPUs with AMX /
    # AVX512-BF16), else fp32 (on an AVX2-only CPU emulated bf16 is tens of times slower)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    cache_features: bool = False  # keep frozen-encoder features in memory after their first use
    # with cache_features: also keep them on disk here, shared by runs with the same encoder (one file per image)
    feature_cache_dir: str | None = None
    logits: Literal["labels", "all"] = "labels"  # lm-head only at positions with a label, or everywhere (HF)
    # lm: next-token loss on answers / captions; grounding: the compressor writes each object's word embeddings
    # into the token covering it (train.grounding; SceneQA data; compressor only, no LLM pass)
    objective: Literal["lm", "grounding"] = "lm"
    grounding_background: float = 0.1  # weight of the non-object tokens' pull towards 0 (objective=grounding)
    # grounding targets also say where the object is: false | true (= words: "top" .. "right", interpolated) |
    # centred (only the differences between places; train.grounding)
    grounding_place: bool | str = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # torch CPU threads per process
    resume: str = "auto"  # auto (latest checkpoint in output_dir, if any) | never | path of a checkpoint
    # config keys that may differ from the checkpoint a run resumes from (e.g. optim.lr after a NaN loss)
    allow_config_change: list[str] | str | None = None

    def validate(self) -> None:
        if self.init.from_ is None and self.init.new_modules:
            raise CompactVLMError("init.new_modules is set but init.from is not", "set init.from to the stage-1 checkpoint")
        if self.threads is not None and self.threads < 1:
            raise CompactVLMError(f"threads must be >= 1 (or null), got {self.threads}", "use e.g. threads=4, or null")
        llm = self.stage.modules.get("llm", "frozen")
        if self.objective == "grounding" and (llm if isinstance(llm, str) else llm.mode) != "frozen":
            raise CompactVLMError("the grounding objective trains the compressor only (it runs no LLM pass)",
                                  "set stage.modules.llm=frozen for objective=grounding")
        if self.objective == "grounding" and self.reduce.name:
            raise CompactVLMError("the grounding objective writes into every token the compressor emits; a reduction "
                                  "cannot be active in it", "drop reduce.name for objective=grounding")
        if self.grounding_place not in (False, True, "none", "words", "centred"):
            raise CompactVLMError(f"grounding_place must be false, true (= words) or centred, got {self.grounding_place!r}",
                                  "use e.g. grounding_place=centred")
        if self.feature_cache_dir and not self.cache_features:
            raise CompactVLMError("feature_cache_dir is set but cache_features is off",
                                  "set cache_features=true (or drop feature_cache_dir)")
        if self.grounding_background < 0:
            raise CompactVLMError(f"grounding_background must be >= 0, got {self.grounding_background}",
                                  "use e.g. grounding_background=0.1")
        if self.seed < 0:
            raise CompactVLMError(f"seed must be >= 0, got {self.seed}", "use e.g. seed=0")
        if not self.output_dir or not str(self.output_dir).strip():
            raise CompactVLMError("output_dir is empty", "set output_dir=runs/NAME")
        acc = self.allow_config_change
        keys = [] if acc is None else [acc] if isinstance(acc, str) else list(acc)
        keys = [k.strip() for part in keys for k in str(part).split(",") if k.strip()]
        bad = [k for k in keys if not changeable_on_resume(k)]
        if bad:
            raise CompactVLMError(
                f"allow_config_change: {', '.join(bad)} cannot change when a run resumes",
                f"only {', '.join(CHANGEABLE_ON_RESUME)} and stage.modules.<name>.lr may differ from the checkpoint; "
                "start a new run (new output_dir) for other changes")
        self.allow_config_change = keys

    def warmup_steps(self, total_steps: int) -> int:
        return math.ceil(self.optim.warmup_ratio * total_steps)


#: keys ``allow_config_change`` may name (a resumed run applies their new values to the optimiser)
CHANGEABLE_ON_RESUME = ("optim.lr", "optim.eps", "optim.weight_decay", "optim.betas", "optim.max_grad_norm",
                        "precision")


def changeable_on_resume(key: str) -> bool:
    parts = key.split(".")
    return key in CHANGEABLE_ON_RESUME or (len(parts) == 4 and parts[:2] == ["stage", "modules"] and parts[3] == "lr")




#: keys that may change between a checkpoint and its resumption
RESUME_FREE_KEYS = ("resume", "output_dir", "logging", "threads", "device", "data.num_workers", "feature_cache_dir",
                    "data.pad_to_multiple_of", "eval", "checkpoint.keep_last",
                    "checkpoint.every_steps", "checkpoint.every_minutes", "allow_config_change")


def to_plain(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a plain dict in file spelling (``init.from``)."""
    d = asdict(cfg)
    d["init"]["from"] = d["init"].pop("from_")
    d["stage"]["modules"] = {k: ({"mode": v.mode, "lr": v.lr} if isinstance(v, ModuleSpec) else v)
                             for k, v in cfg.stage.modules.items()}
    return d


def _rename_init(data: dict) -> dict:
    init = data.get("init")
    if isinstance(init, dict) and "from" in init:
        if "from_" in init:
            raise CompactVLMError("init has both `from` and `from_`", "write init.from only")
        init["from_"] = init.pop("from")
    return data


def train_config_from_dict(data: dict) -> TrainConfig:
    return from_dict(TrainConfig, _rename_init(dict(data)))


def _read_train_file(path: Path, seen: tuple = ()) -> dict:
    """``read_file`` with ``_base_`` chains resolved here, so that each file's model reference is read relative
    to that file."""
    import yaml

    path = Path(path)
    if path.resolve() in seen:
        raise CompactVLMError(f"config {path} inherits from itself through _base_", "remove the cycle")
    if not path.exists():
        raise CompactVLMError(f"config file not found: {path}", "check the path (shipped configs are under configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CompactVLMError(f"cannot parse config {path}: {e}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise CompactVLMError(f"config {path} must be a mapping at the top level", "write key: value pairs")
    model = data.get("model")
    referenced = isinstance(model, str) or (isinstance(model, dict) and "_base_" in model)
    if isinstance(model, str):
        data["model"] = read_file(path.parent / model)
    elif referenced:
        rest = {k: v for k, v in model.items() if k != "_base_"}
        data["model"] = _deep_merge(read_file(path.parent / model["_base_"]), rest)
    base = data.pop("_base_", None)
    if base:
        parent = _read_train_file(path.parent / base, seen + (path.resolve(),))
        if referenced:
            parent.pop("model", None)  # a child naming its own model file replaces the parent's model
        data = _deep_merge(parent, data)
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    data = _read_train_file(Path(path)) if path else {}
    data = apply_overrides(data, list(overrides or []))
    return train_config_from_dict(data)
