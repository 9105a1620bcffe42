"""Shared CLI options for choosing a model, compressor and checkpoint."""

from __future__ import annotations

import argparse


CHECKPOINT_HELP = ("folder written by `compactvlm train` / save_pretrained / convert, or a shipped checkpoint "
                   "demo:NAME (e.g. demo:stf-k2e1; `compactvlm info` lists them)")


def checkpoint_arg(value: str) -> str:
    """argparse ``type`` of every option that takes a checkpoint: ``demo:NAME`` becomes the shipped folder
    (``model.shipped.resolve_checkpoint``, the library's one resolver); other values pass unchanged."""
    from ..errors import CompactVLMError
    from ..model.shipped import resolve_checkpoint

    try:
        return str(resolve_checkpoint(value))
    except CompactVLMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=checkpoint_arg, help=CHECKPOINT_HELP)
    g.add_argument("--encoder", default=None, help="vision encoder: 'dinov2-s' (packaged) or a local HF folder")
    g.add_argument("--llm", default=None, help="LLM: 'smollm2-135m' (packaged) or a local HF folder")
    g.add_argument("--compressor", default=None, metavar="SPEC",
                   help="compressor name or spec NAME[:k=v,...][+REDUCTION[:k=v,...]], e.g. stf:k=2,E=1 or "
                        "mlp2x_gelu+fastv:budget=16,k=2 (see `compactvlm info`)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="compressor option, repeatable (e.g. --param k=2 --param E=1)")
    g.add_argument("--k", type=int, default=None, help="shortcut for --param k=K (window size)")
    g.add_argument("--E", type=int, default=None, help="shortcut for --param E=E (tokens per window)")
    g.add_argument("--tokens", type=int, default=None, help="shortcut for --param tokens=N (e.g. vistog, qformer)")
    g.add_argument("--budget", type=int, default=None, help="test-time token budget (objects, reductions)")
    g.add_argument("--reduce", default=None, metavar="NAME[:k=v,...]", help="training-free reduction at inference (random, avgpool, visionzip, fastv, dart, divprune, "
                   "pyramiddrop, sparsevlm, tome; see `compactvlm info`)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="inference dtype (auto: bfloat16 on a CUDA GPU with bf16, else float32; bfloat16 on this CPU halves TTFT but changes 10-19%% of the current weak models' answers)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")


def check_runtime_args(args: argparse.Namespace) -> None:
    """``--device`` and ``--threads`` checked before any model load (exit 2 with a message, not a traceback)."""
    from ..runtime import check_device, check_threads

    check_threads(getattr(args, "threads", None))
    check_device(getattr(args, "device", "cpu"))


def setup_runtime(args: argparse.Namespace) -> None:
    """The one place a command fixes its process settings, before any model load: ``--threads`` set
    (``runtime.set_threads``), ``--device`` checked."""
    from ..runtime import set_threads

    check_runtime_args(args)
    set_threads(getattr(args, "threads", None))


def resolve_spec(args: argparse.Namespace) -> argparse.Namespace:
    """Parse ``--compressor SPEC`` (a name, a named variant or the whole syntax), ``--reduce NAME[:k=v]`` and
    ``--budget`` once into one ``compactvlm.spec.MethodSpec`` (``args.spec``) and onto the plain options:
    ``args.compressor``, ``args.spec_params``, ``args.reduce``, ``args.budget``, ``args.reduce_params``. A setting
    given twice (in the spec and as its own flag) is refused."""
    from ..spec import MethodSpec

    if getattr(args, "_spec_resolved", False):
        return args
    spec = MethodSpec.combine(getattr(args, "compressor", None), getattr(args, "reduce", None),
                              getattr(args, "budget", None))
    args.spec = spec
    args.compressor, args.spec_params = spec.compressor or None, dict(spec.compressor_params)
    args.reduce, args.reduce_params = spec.reduction, spec.reduction_options
    args.budget = spec.budget if spec.reduction else spec.own_budget
    args._spec_resolved = True
    return args


def compressor_params(args: argparse.Namespace) -> dict:
    from ..config import parse_value
    from ..errors import CompactVLMError

    resolve_spec(args)
    params: dict = dict(args.spec_params)
    for kv in args.param:
        if "=" not in kv:
            raise CompactVLMError(f"--param {kv!r} is not KEY=VALUE", "write e.g. --param k=2")
        k, v = kv.split("=", 1)
        params[k] = parse_value(v)
    for name in ("k", "E", "tokens"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params


def model_from_args(args: argparse.Namespace, progress: bool = True):
    """Build (or load) the model the CLI options describe."""
    from ..model.build import ModelConfig, build_model

    resolve_spec(args)
    check_runtime_args(args)
    params = compressor_params(args)
    trained_with = None  # the reduction a checkpoint was trained with (train config `reduce`), if any
    if args.checkpoint:
        from ..model.checkpoint import CONFIG_NAME, load_pretrained
        from ..model.shipped import resolve_checkpoint

        ck = resolve_checkpoint(args.checkpoint)
        if not (ck / CONFIG_NAME).exists() and (ck / "config.json").exists():
            from ..interop import load_model  # a llava-hf / LLaVA / LLaVA-STF folder, converted in memory

            model = load_model(ck, vision_tower=args.encoder)
        else:
            model = load_pretrained(ck, compressor=args.compressor, compressor_params=params or None,
                                    progress=progress)
            from ..model.checkpoint import read_config

            trained_with = ((read_config(ck)[1].get("train") or {}).get("reduce") or {})
    else:
        cfg = ModelConfig(compressor=args.compressor or "mlp2x_gelu", compressor_params=params)
        if args.encoder:
            cfg.encoder = args.encoder
        if args.llm:
            cfg.llm = args.llm
        model = build_model(cfg, progress=progress)
    warn_untrained(model)  # every model: a checkpoint's init_state says which parts were never trained
    args.spec.apply(model)  # the test-time reduction or the compressor's own budget (CompactVLM.set_budget)
    note_trained_reduction(model, trained_with or {}, args.checkpoint)
    if args.device != "cpu":
        model.to(args.device)
    model.set_dtype(getattr(args, "dtype", None) or "auto")
    return model


def warn_untrained(model) -> None:
    """One line on stderr when a trainable part of ``model`` is at its random initialisation
    (``model.init_state``: e.g. a compressor built without --checkpoint): its answers are meaningless."""
    import sys

    from ..model.init_state import untrained_parts

    parts = untrained_parts(model)
    if parts:
        print(f"warning: {' and '.join(parts)} has random (untrained) weights, so the answers are meaningless; "
              "pass --checkpoint DIR with trained weights (e.g. --checkpoint demo:stf-k2e1, trained on SceneQA only; "
              "`compactvlm info` lists the shipped ones)", file=sys.stderr)


def note_trained_reduction(model, trained: dict, checkpoint) -> None:
    """One line on stderr when ``checkpoint`` was trained with a reduction active (``train.config.ReduceConfig``) and
    runs here without that reduction, at another budget or with other options (e.g. DART's pivots): it then answers
    from tokens it never trained on."""
    import sys

    from ..spec import format_options

    name, budget, opts = trained.get("name"), trained.get("budget"), dict(trained.get("params") or {})
    if not name:
        return
    red = model.reduction
    if (red is not None and red.registry_name == name and red.params.get("budget") == budget
            and all(red.params.get(k) == v for k, v in opts.items())):
        return
    opt_text = format_options(opts)
    spec, trained_as = (f"{name}:{opt_text}", f"{name} at budget {budget} ({opt_text})") if opts else \
        (name, f"{name} at budget {budget}")
    print(f"note: {checkpoint} was trained with reduction {trained_as} active; it runs here with "
          f"{model.num_image_tokens()} vision tokens{' (' + red.describe() + ')' if red is not None else ''}; pass "
          f"--reduce {spec} --budget {budget} to answer as it trained", file=sys.stderr)


def apply_budget(model, budget: int | None, reduce: str | None) -> None:
    """``CompactVLM.set_budget`` (kept for callers of the command layer)."""
    model.set_budget(budget, reduce)
