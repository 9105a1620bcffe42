"""The side-by-side web demo behind ``compactvlm serve`` (Gradio; LLaVA ships a Gradio demo too).

Upload an image, ask a question, tick two or more methods (each a spec of ``compactvlm.spec``: a compressor
or named variant, optionally ``+REDUCTION:budget=N``); each answer comes with its vision-token count, the LLM's
prefill FLOPs, the TTFT (encode + compress + LLM prefill) and its token map, side by side. The default methods
are ``spec.default_comparison`` (the reference, the registry's default variants, every reduction at a quarter of
the patch tokens), minus those the model cannot run; ``compactvlm serve --methods SPEC ...`` picks others.

- One model: the encoder and the LLM are loaded once; methods swap ``model.compressor`` and
  ``model.reduction`` (compressors and reductions are built once per method, seeded, and cached).
- One model run at a time: ``MethodPool`` holds a lock and the app's queue runs one request at a time
  (``concurrency_limit=1``); further requests wait in the queue.
- Bad uploads (not an image, corrupt, too small, too large) get the message of ``data.images.load_image``;
  a method that fails shows its error in its own panel; nothing takes the server down.
- Untrained methods give meaningless answers: the method list marks every method whose compressor is at its
  random initialisation (``model.init_state``; every method but a ``--checkpoint`` one, e.g. ``--checkpoint
  demo:stf-k2e1``, which adds a trained method, and training-free ones).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import CompactVLMError
from ..model.init_state import is_random, mark_random
from ..spec import MethodSpec, default_comparison
from .draw import cell_size, render
from .token_maps import token_map

CHECKPOINT = "__checkpoint__"
#: appended to a method's name in the method list when its compressor has random (untrained) weights
UNTRAINED_MARK = " — untrained"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


@dataclass
class MethodResult:
    label: str
    answer: str = ""
    num_tokens: int | None = None
    flops: float | None = None
    ttft_ms: float | None = None
    picture: Any = None  # PIL image of the token map
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def stats(self) -> str:
        return (f"tokens: {self.num_tokens if self.num_tokens is not None else 'n/a'} · "
                f"FLOPs: {format_flops(self.flops)} · TTFT: "
                f"{'n/a' if self.ttft_ms is None else f'{self.ttft_ms:.0f} ms'}")


def format_flops(flops: float | None) -> str:
    if flops is None:
        return "n/a"
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOPs"


def format_answer(text: str) -> str:
    return text if text.strip() else "(empty answer)"


def prefill_flops(model, question: str) -> float | None:
    """LLM prefill FLOPs of the prompt with this model's vision tokens, from ``compactvlm.efficiency`` when
    that package provides it; None ("n/a") otherwise."""
    try:
        from .. import efficiency  # noqa: F401
    except ImportError:
        return None
    fn = None
    for mod_name, fn_name in (("flops", "prefill_flops"), ("flops", "llm_prefill_flops"), ("", "prefill_flops")):
        try:
            mod = __import__(f"compactvlm.efficiency{'.' + mod_name if mod_name else ''}", fromlist=[fn_name])
        except ImportError:
            continue
        fn = getattr(mod, fn_name, None)
        if callable(fn):
            break
    if not callable(fn):
        return None
    try:
        value = fn(model, question)
    except Exception:  # noqa: BLE001 - a missing number must not break the demo
        return None
    value = getattr(value, "total", value)
    return float(value) if isinstance(value, (int, float)) else None


class MethodPool:
    """One CompactVLM whose compressor / reduction is swapped per method (built once, cached)."""

    def __init__(self, model, methods: Sequence[str | MethodSpec] | None = None, seed: int = 0, repeats: int = 2,
                 checkpoint_label: str | None = None):
        self.model = model
        self.seed = seed
        self.repeats = repeats
        self.lock = threading.Lock()
        self._compressors: dict[tuple, torch.nn.Module] = {}
        self._reductions: dict[str, torch.nn.Module] = {}
        given = methods is not None
        if methods is None:
            methods = default_comparison(model.grid[0] * model.grid[1])
        specs = [m if isinstance(m, MethodSpec) else MethodSpec.parse(m) for m in methods]
        own, self.methods = model.compressor, {}
        if checkpoint_label:
            self._compressors[(CHECKPOINT,)] = model.compressor
            self.methods[checkpoint_label] = MethodSpec(checkpoint_label, CHECKPOINT)
        for spec in specs:  # built once here: the defaults the model cannot run are left out, a given one is refused
            try:
                self.activate(spec)
            except CompactVLMError as e:
                if given:
                    raise CompactVLMError(f"method {spec.text!r}: {e.problem}", e.fix) from None
                continue
            self.methods[spec.label] = spec
        model.compressor, model.reduction = own, None

    def _compressor(self, spec: MethodSpec):
        from ..compressors.base import create_compressor

        key = (CHECKPOINT,) if spec.compressor == CHECKPOINT else (spec.compressor, repr(sorted(spec.compressor_params.items())))
        comp = self._compressors.get(key)
        if comp is None:
            torch.manual_seed(self.seed)
            m = self.model
            comp = create_compressor(spec.compressor, enc=m.encoder.info, llm_dim=m.llm_dim, **spec.compressor_params)
            ref = next(m.llm.parameters())
            comp = comp.to(device=ref.device, dtype=ref.dtype).eval()
            mark_random(comp)  # a fresh method compressor: random weights
            self._compressors[key] = comp
        return comp

    def untrained(self, label: str) -> bool:
        """Whether the method's compressor has learned weights at their random initialisation
        (``model.init_state``: every method's compressor is built, and marked, in ``__init__``)."""
        return is_random(self._compressor(self.methods[label]))

    def choices(self) -> list[tuple[str, str]]:
        """(shown name, method label) per method, untrained ones marked (the method list of the page)."""
        return [(lab + (UNTRAINED_MARK if self.untrained(lab) else ""), lab) for lab in self.methods]

    def activate(self, spec: MethodSpec):
        """Put the method's compressor (and reduction) into the model; returns the model."""
        from ..registry import REDUCTIONS

        m = self.model
        m.reduction = None
        comp = self._compressor(spec)
        m.compressor = comp
        if spec.own_budget is not None:
            comp.set_budget(spec.own_budget)  # refuses for compressors without a budget
        if spec.reduction:
            red = self._reductions.get(spec.text)
            if red is None:
                red = REDUCTIONS.create(spec.reduction, model=m, **spec.reduction_params)
                self._reductions[spec.text] = red
            m.reduction = red
        m.num_image_tokens()  # checks the budget against this model's grid
        return m

    def time_methods(self, labels: list[str], image, question: str):
        """TTFT of the methods ``labels`` on one image and question, interleaved rounds (``efficiency.timing.
        compare_ttft``; the first label is the reference); None when a method cannot run (its own run says why)."""
        from ..efficiency.timing import compare_ttft

        with self.lock:
            try:
                torch.manual_seed(self.seed)
                before = {lab: (lambda p=self.methods[lab]: self.activate(p)) for lab in labels}
                return compare_ttft([(lab, self.model) for lab in labels], [image], question,
                                    repeats=max(self.repeats, 3), warmup=1, before=before)
            except Exception:  # noqa: BLE001 - each method's own run reports its error
                return None

    def run(self, label: str, image, question: str, max_new_tokens: int = 16,
            ttft_ms: float | None = None) -> MethodResult:
        """Answer with one method: answer, token count, FLOPs, TTFT and the token-map picture. ``ttft_ms`` from
        an interleaved comparison (``time_methods``); measured here, alone, when None."""
        p = self.methods[label]
        out = MethodResult(label)
        with self.lock:
            try:
                m = self.activate(p)
                torch.manual_seed(self.seed)
                pix = m.processor([image])
                tmap = token_map(m, pix, question)
                res = m.generate([image], [question], max_new_tokens=max_new_tokens)
                out.answer, out.num_tokens = res.texts[0], res.num_image_tokens
                if ttft_ms is None:
                    from ..efficiency.timing import ttft_ms as measure

                    ttft_ms = measure(m, [image], question, repeats=self.repeats)
                out.ttft_ms = ttft_ms
                out.flops = prefill_flops(m, question)
                out.notes = list(tmap.notes)
                out.picture = render(tmap, m.processor.square(image), ttft_ms=out.ttft_ms, flops=out.flops,
                                     cell=cell_size(tmap.grid, 320), font_size=12)
            except CompactVLMError as e:
                out.error = str(e)
            except Exception as e:  # noqa: BLE001 - one failing method must not take the others down
                out.error = f"{type(e).__name__}: {e}"
        return out


# ---- request handlers (plain functions, tested without a browser) -------------------------------------------
def check_upload(path: str | None):
    """(message, PIL image or None) for an uploaded file."""
    from ..data.images import load_image

    if not path:
        return "Upload an image (PNG, JPEG, WebP, ...).", None
    try:
        img = load_image(path)
    except CompactVLMError as e:
        return f"**Cannot use this file:** {str(e).replace(str(path), Path(path).name)}", None
    return f"Image {img.width}x{img.height} ready.", img


def compare(pool: MethodPool, path: str | None, question: str, labels: list[str] | None,
            max_new_tokens: int = 16) -> tuple[str, list[list[str]], dict[str, MethodResult]]:
    """(status message, table rows, results by label) for one request."""
    message, img = check_upload(path)
    if img is None:
        return message, [], {}
    question = (question or "").strip()
    if not question:
        return "Type a question first.", [], {}
    labels = [lab for lab in (labels or []) if lab in pool.methods]
    if not labels:
        return "Pick at least one method (two or more to compare).", [], {}
    t = time.perf_counter()
    cmp = pool.time_methods(labels, img, question) if len(labels) > 1 else None
    ttft = {lab: cmp.median_ms(lab) for lab in labels} if cmp is not None else {}
    results = {lab: pool.run(lab, img, question, int(max_new_tokens), ttft.get(lab)) for lab in labels}
    rows = [[r.label, str(r.num_tokens) if r.num_tokens is not None else "n/a", format_flops(r.flops),
             f"{r.ttft_ms:.0f}" if r.ttft_ms is not None else "n/a",
             f"error: {r.error}" if r.error else format_answer(r.answer)] for r in results.values()]
    failed = sum(r.error is not None for r in results.values())
    status = f"Compared {len(labels)} method{'s' * (len(labels) != 1)} in {time.perf_counter() - t:.1f} s."
    if failed:
        status += f" {failed} failed (see their panels)."
    if cmp is not None:
        status += (f" TTFT from {cmp.rounds} interleaved rounds; speedup over {cmp.reference}: "
                   + "; ".join(f"{lab} {cmp.describe(lab)}" for lab in labels[1:]) + ".")
        status += "".join(f" **Warning:** {w}." for w in cmp.warnings)
    return status, rows, results


# ---- the page -----------------------------------------------------------------------------------------------
HEADERS = ["method", "vision tokens", "LLM prefill FLOPs", "TTFT ms", "answer"]


def build_app(pool: MethodPool, title: str = "compactvlm: compare vision-token compressors",
              default: list[str] | None = None, max_new_tokens: int = 16):
    import gradio as gr

    labels = list(pool.methods)
    default = default or labels[:2]
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nUpload an image, ask a question, tick two or more methods. Each answer comes "
                    "with the vision tokens that reached the LLM, the LLM prefill FLOPs, the time to first token "
                    "(encode + compress + LLM prefill) and a map of the tokens. Methods marked \"untrained\" "
                    "have random compressor weights and give meaningless answers; "
                    "start the server with --checkpoint demo:stf-k2e1 (or your own trained folder) to add a "
                    "trained one.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image", file_count="single", type="filepath", elem_id="image-upload")
                preview = gr.Image(label="uploaded image", type="pil", interactive=False, elem_id="preview",
                                   height=220)
                status = gr.Markdown("Upload an image (PNG, JPEG, WebP, ...).", elem_id="status")
            with gr.Column(scale=2):
                question = gr.Textbox(label="question", value="What is in the image?", elem_id="question")
                methods = gr.CheckboxGroup(pool.choices(), value=default, label="methods", elem_id="methods")
                new_tokens = gr.Slider(1, 64, value=max_new_tokens, step=1, label="max new tokens",
                                       elem_id="max-new-tokens")
                run_btn = gr.Button("Compare", variant="primary", elem_id="run")
        table = gr.Dataframe(headers=HEADERS, value=[], label="results", interactive=False, wrap=True,
                             elem_id="results-table")
        panels, outputs = [], []
        with gr.Row(equal_height=False):
            for label in pool.methods:
                sl = slug(label)
                with gr.Column(visible=False, min_width=240, elem_id=f"panel-{sl}") as col:
                    pic = gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=f"map-{sl}")
                    stats = gr.Markdown(elem_id=f"stats-{sl}")
                    answer = gr.Textbox(label=f"answer: {label}", interactive=False, lines=2, elem_id=f"answer-{sl}")
                panels.append(label)
                outputs += [col, pic, stats, answer]

        def on_upload(path):
            message, img = check_upload(path)
            return message, img

        def on_run(path, q, chosen, n_new):
            message, rows, results = compare(pool, path, q, chosen, n_new)
            updates: list = [message, rows]
            for lab in panels:
                r = results.get(lab)
                if r is None:
                    updates += [gr.update(visible=False), None, "", ""]
                elif r.error:
                    updates += [gr.update(visible=True), None, f"**{lab}**: error: {r.error}", ""]
                else:
                    notes = "".join(f"<br>{n}" for n in r.notes)
                    updates += [gr.update(visible=True), r.picture, f"**{lab}** — {r.stats()}{notes}",
                                format_answer(r.answer)]
            return updates

        upload.change(on_upload, inputs=upload, outputs=[status, preview], concurrency_limit=4)
        run_btn.click(on_run, inputs=[upload, question, methods, new_tokens], outputs=[status, table] + outputs,
                      concurrency_limit=1, concurrency_id="model")
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False):
    """Serve until interrupted (fonts from the system: the page fetches nothing from the internet)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return app.launch(server_name=host, server_port=port, share=False, show_error=True, ssr_mode=False,
                      quiet=quiet, max_file_size="50mb", theme=theme)
