"""compactvlm serve [--port P] [--host 127.0.0.1] [--tiny] [--checkpoint DIR] [--methods SPEC ...]"""

from __future__ import annotations

import argparse
import os

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="web demo: compare compressors side by side",
        description="A Gradio page on which you upload an image, ask a question and compare several "
                    "compressors / budgets side by side: answer, vision tokens, LLM prefill FLOPs, TTFT and token "
                    "map. Requests run one at a time. Needs gradio (pip install 'compactvlm[demo]').")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--tiny", action="store_true", help="tiny random models (tests; starts in seconds)")
    from ._common import checkpoint_arg

    p.add_argument("--checkpoint", type=checkpoint_arg,
                   help="also offer this trained model as a method: a folder (`compactvlm train` output) or a shipped "
                        "checkpoint demo:NAME (e.g. demo:stf-k2e1; `compactvlm info` lists them)")
    p.add_argument("--encoder", default=None, help="vision encoder: 'dinov2-s' (packaged) or a local HF folder")
    p.add_argument("--llm", default=None, help="LLM: 'smollm2-135m' (packaged) or a local HF folder")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="methods to offer, each NAME[:k=v,...][+REDUCTION[:k=v,...]] or a named variant, e.g. "
                        "stf_k2e1 vistog:tokens=32 mlp2x_gelu+fastv:budget=16,k=2 (default: the full-token reference, "
                        "the registry's default variants and every reduction at a quarter of the patch tokens)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="default answer length")
    p.add_argument("--repeats", type=int, default=2, help="prefill runs for each TTFT median")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="inference dtype (auto: bfloat16 on a CUDA GPU with bf16, else float32; bfloat16 on this CPU halves TTFT but changes 10-19%% of the current weak models' answers)")
    p.set_defaults(func=run)


def load_model(args: argparse.Namespace):
    """(model, checkpoint label or None): the encoder + LLM shared by every method."""
    from ..errors import CompactVLMError

    if args.tiny:
        if args.checkpoint or args.encoder or args.llm:
            raise CompactVLMError("--tiny builds its own random models", "drop --checkpoint/--encoder/--llm, or --tiny")
        from ..testing import tiny_vlm

        return tiny_vlm("mlp2x_gelu"), None
    if args.checkpoint:
        from ..model.checkpoint import load_pretrained

        model = load_pretrained(args.checkpoint)
        return model, f"checkpoint: {model.compressor.registry_name} ({os.path.basename(os.path.normpath(args.checkpoint))})"
    from ..model.build import ModelConfig, build_model

    cfg = ModelConfig()
    if args.encoder:
        cfg.encoder = args.encoder
    if args.llm:
        cfg.llm = args.llm
    return build_model(cfg), None


def method_specs(args: argparse.Namespace):
    """``--methods`` parsed (``compactvlm.spec.MethodSpec``) before any model is loaded; None for the defaults."""
    from ..spec import MethodSpec

    return None if not args.methods else [MethodSpec.parse(m) for m in args.methods]


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import CompactVLMError

    if not 0 < args.port < 65536:
        raise CompactVLMError(f"--port {args.port} is not a TCP port", "use e.g. 7860")
    if args.max_new_tokens < 1 or args.repeats < 1:
        raise CompactVLMError("--max-new-tokens and --repeats must be >= 1", "use e.g. --max-new-tokens 16 --repeats 2")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CompactVLMError("the web demo needs gradio, which is not installed",
                              "pip install 'compactvlm[demo]' (or bash scripts/setup_browser.sh)") from None
    from ..runtime import set_threads
    from ..viz.app import MethodPool, build_app, launch

    methods = method_specs(args)
    set_threads(args.threads)
    if args.host not in LOOPBACK:
        print(f"warning: binding {args.host}: anyone who can reach this address can use the demo", file=sys.stderr)
    model, ckpt_label = load_model(args)
    # --tiny: random models that the tests rebuild in float32 as the reference, so auto keeps them float32
    model.set_dtype("float32" if args.tiny and args.dtype == "auto" else args.dtype)
    pool = MethodPool(model, methods, repeats=args.repeats, checkpoint_label=ckpt_label)
    app = build_app(pool, max_new_tokens=args.max_new_tokens)
    print(f"compactvlm serve: {len(pool.methods)} methods: {', '.join(shown for shown, _ in pool.choices())}",
          flush=True)
    untrained = [lab for lab in pool.methods if pool.untrained(lab)]
    if untrained:
        print(f"warning: {len(untrained)} of {len(pool.methods)} methods have random (untrained) compressor weights "
              "(marked 'untrained'), so their answers are meaningless; add a trained one with --checkpoint DIR "
              "(e.g. --checkpoint demo:stf-k2e1, trained on SceneQA only)", file=sys.stderr, flush=True)
    launch(app, host=args.host, port=args.port)
    return 0
