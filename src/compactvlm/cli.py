"""``compactvlm`` console script. Each subcommand lives in ``compactvlm/commands/<name>.py`` and exposes
``add_parser(subparsers)`` (which sets ``func``) — the CLI discovers them, so commands stay independent."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .errors import CompactVLMError

ORDER = ["info", "ask", "data", "train", "eval", "bench", "study", "convert", "export", "viz", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(prog="compactvlm", description="Compact vision tokens for LLaVA-style VLMs: build, train, evaluate, benchmark.")
    parser.add_argument("--version", action="version", version=f"compactvlm {__import__('compactvlm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        importlib.import_module(f"{commands.__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CompactVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`compactvlm ... | head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


if __name__ == "__main__":
    sys.exit(main())
