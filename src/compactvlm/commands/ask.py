"""compactvlm ask --image PATH --question TEXT [--compressor NAME] [--checkpoint DIR]"""

from __future__ import annotations

import argparse
import time

from ._common import add_model_args, model_from_args, setup_runtime


def add_parser(sub) -> None:
    p = sub.add_parser("ask", help="answer a question about an image",
                       description="Answer a question about one image and print the tokens used and timing.")
    p.add_argument("--image", required=True, help="image file (PNG/JPEG/...)")
    p.add_argument("--question", required=True, help="question text")
    p.add_argument("--max-new-tokens", type=int, default=32)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..errors import CompactVLMError

    if not args.question.strip():
        raise CompactVLMError("the question is empty", "pass --question 'What is in the image?'")
    if args.max_new_tokens < 1:
        raise CompactVLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}", "use e.g. 32")
    from ..data.llava import control_tokens

    found = control_tokens(args.question) + (["<image>"] if "<image>" in args.question else [])
    if found:
        raise CompactVLMError(f"the question contains control text {', '.join(found)}",
                              "remove it: chat-template markers and <image> are refused, not escaped (the image is "
                              "placed by compactvlm)")
    setup_runtime(args)
    image = load_image(args.image)
    t = time.perf_counter()
    model = model_from_args(args)
    load_s = time.perf_counter() - t
    res = model.generate([image], [args.question], max_new_tokens=args.max_new_tokens)
    from ..efficiency.timing import ttft_ms

    prefill = ttft_ms(model, [image], args.question)
    print(f"answer: {res.texts[0]}")
    print(f"compressor: {model.compressor.describe()}")
    print(f"vision tokens: {res.num_image_tokens}  prompt tokens: {res.prompt_tokens[0]}")
    print(f"prefill (encode+compress+LLM prefill, median): {prefill:.0f} ms  "
          f"generate: {res.timings_ms['generate_ms']:.0f} ms  load: {load_s:.1f} s")
    return 0
