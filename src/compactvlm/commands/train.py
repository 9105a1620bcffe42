"""compactvlm train --config FILE [key=value ...]: train a compressor (stage 1) or the model (stage 2).

Multi-process: launch the same command with ``accelerate launch`` (``--config_file configs/accelerate/...``) or
``torchrun``, e.g. ``accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml -m compactvlm.cli train
--config configs/train/llava15_stage1.yaml``.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a compact model (stage 1 / stage 2) from a config",
        description="Train from a YAML config (configs/train/*.yaml). Any config key can be overridden as "
                    "dotted.key=value, e.g. optim.lr=1e-4 data.train=DIR/train.json stage.modules.llm=lora. "
                    "Resumes from the latest checkpoint in output_dir unless resume=never.")
    p.add_argument("--config", required=True, help="train config YAML (see configs/train/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.max_steps=20")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import load_train_config, train
    from ..train.config import to_plain

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_plain(cfg), sort_keys=False), end="")
        return 0
    try:
        res = train(cfg)
    finally:
        _end_process_group()
    if res.val_losses:
        print("val loss: " + ", ".join(f"step {s}: {v:.4f}" for s, v in res.val_losses))
    print(f"model: {res.final_dir}")
    return 0


def _end_process_group() -> None:
    """Under torchrun / accelerate launch, leave the process group before the interpreter exits: a gloo group torn
    down by interpreter exit instead can abort a process ("terminate called without an active exception", SIGABRT)
    after the training itself has finished and saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
