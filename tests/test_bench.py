"""compactvlm bench: FlopCounterMode FLOPs on the meta device (LLaVA-1.5-7B acceptance), timings of a tiny
random-weight model through the CLI (JSON + PNG), and clear errors for bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from compactvlm.cli import main
from compactvlm.efficiency.flops import count_rows
from compactvlm.efficiency.presets import resolve_model
from compactvlm.errors import CompactVLMError


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An HF llava-style folder (config.json only): CLIP 32 px / patch 4 (8x8 = 64 patches) + a 4-layer Llama."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                              patch_size=4, image_size=32, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("tiny-llava")
    LlavaConfig(vision_config=vision, text_config=text).save_pretrained(folder)
    return folder


# ---- FLOPs: the LLaVA-1.5-7B acceptance, on meta --------------------------------------------------------------
def test_llava_15_7b_vision_only_prefill_is_7_6_and_1_9_tflops(tmp_path, capsys):
    out = tmp_path / "llava.json"
    rc = main(["bench", "--model", "llava-1.5-7b", "--flops-only", "--threads", "1", "--json", str(out),
               "--compressor", "stf:k=2,E=1", "mlp2x_gelu+fastv:budget=144,k=2"])
    assert rc == 0
    table = capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["mlp2x_gelu", "stf:k=2,E=1", "mlp2x_gelu+fastv:budget=144,k=2"]  # reference added first
    full, stf, fastv = (rows[k]["flops"] for k in rows)
    assert (full["vision_tokens"], stf["vision_tokens"]) == (576, 144)
    assert full["llm_vision_only"] / 1e12 == pytest.approx(7.63, abs=0.01)
    assert stf["llm_vision_only"] / 1e12 == pytest.approx(1.88, abs=0.01)
    assert "7.63" in table and "1.88" in table and "TFLOPs" in table
    # the same encoder for both; the text tokens of the prompt cost extra prefill; STF's compressor is bigger
    assert full["encoder"] == stf["encoder"] > 0.3e12
    assert full["llm_prefill"] > full["llm_vision_only"] and full["text_tokens"] == 40
    assert stf["compressor"] > full["compressor"] > 0
    assert rows["stf:k=2,E=1"]["ratios"]["flops_ideal_speedup"] == pytest.approx(full["total"] / stf["total"])
    # FastV: all 576 tokens in the prompt, (2*576 + 30*144)/32 = 171 equivalent tokens; its LLM cost lies
    # between the 144- and 576-token plain models, near a plain model at 171 tokens
    assert fastv["vision_tokens"] == 576 and fastv["equivalent_tokens"] == pytest.approx(171.0)
    assert stf["llm_prefill"] < fastv["llm_prefill"] < full["llm_prefill"]
    plain_171 = stf["llm_prefill"] + (full["llm_prefill"] - stf["llm_prefill"]) * (171 - 144) / (576 - 144)
    assert fastv["llm_prefill"] == pytest.approx(plain_171, rel=0.05)
    assert "equivalent tokens" in table
    assert ("fastv keeps all 576 vision tokens in the prompt; its first 2 LLM layers see all of them, the layers "
            "after 2 only the kept ones: 171.0 equivalent tokens") in table
    # KV cache measured from the meta prefill: 32 layers x (K, V) x 32 heads x 128 x 616 tokens x 2 bytes (bf16)
    assert full["kv_cache_bytes"] == 32 * 2 * 4096 * (576 + 40) * 2


def test_data_dependent_reduction_is_counted_with_a_cpu_vision_stage(tiny_folder):
    preset = resolve_model(str(tiny_folder))
    full, vz = count_rows(preset, ["mlp2x_gelu", "mlp2x_gelu+visionzip:budget=16"], text_tokens=8)
    assert vz.vision_counted_on == "cpu" and full.vision_counted_on == "meta"
    assert vz.encoder == full.encoder  # the CPU copy is counted like meta (math SDPA, same blocks)
    assert vz.vision_tokens == 16 and vz.llm_prefill < full.llm_prefill


def test_folder_preset_takes_the_folders_preprocessing(tiny_folder, tmp_path):
    """An HF folder's preprocessor_config.json gives the bench's processor its mean/std and square mode
    (encoders.preprocessing, the one place for them); without one: ImageNet statistics, whole-image resize."""
    import shutil

    from compactvlm.efficiency.presets import build_backbone
    from compactvlm.encoders.preprocessing import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN

    plain = resolve_model(str(tiny_folder))
    assert plain.image_mean == IMAGENET_MEAN and plain.image_aspect == "resize"
    folder = tmp_path / "with-processor"
    shutil.copytree(tiny_folder, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "size": {"shortest_edge": 32},
         "do_center_crop": True, "crop_size": {"height": 32, "width": 32}}))
    preset = resolve_model(str(folder))
    assert preset.image_mean == CLIP_MEAN and preset.image_std == CLIP_STD and preset.image_aspect == "crop"
    proc = build_backbone(preset, weights="meta").processor
    assert tuple(proc.mean) == CLIP_MEAN and proc.aspect == "crop"


# ---- timings of a tiny random-weight model through the CLI ----------------------------------------------------
def test_tiny_random_model_timing_writes_json_and_png(tiny_folder, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", "--model", str(tiny_folder), "--random-weights", "--dtype", "float32", "--threads", "1",
               "--batch", "2",
               "--warmup", "1", "--repeats", "3", "--decode-tokens", "3", "--text-tokens", "12",
               "--compressor", "stf:k=2,E=1", "--compressor", "mlp2x_gelu+fastv:budget=16,k=2",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "TTFT" in text and "speedup" in text and "% of TTFT" in text and "interleaved rounds" in text
    assert "CPU ms" in text and "CPU-time x" in text
    data = json.loads(out.read_text())
    assert data["settings"]["threads"] == 1 and data["settings"]["attn_implementation"] == "sdpa"
    rows = {r["label"]: r for r in data["rows"]}
    assert list(rows) == ["mlp2x_gelu", "stf:k=2,E=1", "mlp2x_gelu+fastv:budget=16,k=2"]
    for label, r in rows.items():
        t, f, q = r["timing"], r["flops"], r["ratios"]
        tt = t["ttft_ms"]
        assert len(tt["samples"]) == 3 and 0 < tt["min"] <= tt["median"] <= tt["max"]
        parts = t["encode_ms"] + t["compress_ms"] + t["llm_ms"]
        # medians of the parts of the same runs add up to a run's total; bounded by the runs' spread, since on a
        # loaded machine one of three millisecond-scale runs can be an outlier
        assert 0.5 * tt["min"] <= parts <= 1.5 * tt["max"]
        assert t["encode_ms"] > 0 and t["llm_ms"] > 0
        assert t["batch"] == 2 and t["prompt_tokens"] == 12 + f["vision_tokens"]
        # the cache of the timed prefill holds what the meta count says, for the whole batch
        assert t["kv_cache_bytes"] == 2 * f["kv_cache_bytes"]
        assert t["peak_memory_bytes"] > 0
        # the median over rounds of the per-round ratio, inside that ratio's spread
        assert q["ttft_speedup_min"] <= q["ttft_speedup_p25"] <= q["ttft_speedup"] <= q["ttft_speedup_p75"]
        assert q["ttft_speedup_p75"] <= q["ttft_speedup_max"] and q["ttft_cpu_speedup"] > 0
        assert t["cpu_ms"]["median"] > 0 and len(t["cpu_ms"]["samples"]) == 3
        assert q["measured_over_ideal"] == pytest.approx(q["ttft_speedup"] / q["flops_ideal_speedup"])
        assert 0 <= q["compressor_share_of_ttft"] < 1
    # 4 layers x (K, V) x 2 KV heads x head_dim 8 x tokens x 4 bytes (float32): 76 prompt tokens, 28 after STF;
    # FastV keeps all 76 in its first 2 layers and 12 text + 16 vision tokens in the other 2
    per_token_layer = 2 * 2 * 8 * 4
    assert rows["mlp2x_gelu"]["flops"]["kv_cache_bytes"] == 4 * per_token_layer * 76
    assert rows["stf:k=2,E=1"]["flops"]["kv_cache_bytes"] == 4 * per_token_layer * 28
    assert rows["mlp2x_gelu+fastv:budget=16,k=2"]["flops"]["kv_cache_bytes"] == per_token_layer * (2 * 76 + 2 * 28)
    assert rows["mlp2x_gelu+fastv:budget=16,k=2"]["flops"]["equivalent_tokens"] == pytest.approx(40.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# ---- bad inputs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, problem, hint", [
    (["--model", "no-such-preset"], "neither a preset nor a folder", "llava-1.5-7b"),
    (["--compressor", "nope"], "unknown compressor 'nope'", "available"),
    (["--compressor", "mlp2x_gelu+visionzip:budget=5000"], "budget=5000 exceeds the 64", "1..64"),
    (["--compressor", "stf:k=3"], "k=3 does not divide the 8x8 patch grid", "divisors"),
    (["--compressor", "mlp2x_gelu+"], "'+' but no reduction", "visionzip"),
    (["--compressor", "mlp2x_gelu+fastv:budget=16,k=9"], "fastv k=9", "1..3"),
    (["--batch", "0"], "--batch must be >= 1", None),
])
def test_bad_inputs_give_a_clear_error(tiny_folder, tmp_path, capsys, args, problem, hint):
    argv = ["bench", "--flops-only", "--json", str(tmp_path / "x.json")]
    if "--model" not in args:
        argv += ["--model", str(tiny_folder)]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and problem in err and "Traceback" not in err
    if hint:
        assert hint in err
    assert not (tmp_path / "x.json").exists()


def test_output_files_replace_only_the_benchs_own(tiny_folder, tmp_path, capsys):
    """A later bench replaces the JSON and PNG an earlier bench wrote; a file of anyone else's at --json or --plot
    is refused before any work, and left as it was."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(tiny_folder), "--flops-only", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0 and json.loads(out.read_text())["written_by"] == "compactvlm bench"
    assert main(argv) == 0  # its own report: replaced
    from PIL import Image

    for path, flag, argv2 in ((out, "--json", argv), (png, "--plot", argv + ["--plot", str(png)])):
        Image.new("RGB", (4, 4)).save(png)  # a PNG the bench did not write
        if path is out:
            out.write_text('{"mine": 1}')
        capsys.readouterr()
        assert main(argv2) == 2
        err = capsys.readouterr().err
        assert f"{flag} {path} exists and is not a file compactvlm bench wrote" in err and "another" in err
        if path is out:
            assert out.read_text() == '{"mine": 1}'
        else:
            with Image.open(png) as im:
                assert im.info.get("Software") is None
        out.unlink(missing_ok=True)
    png.unlink()
    assert main(argv + ["--plot", str(png)]) == 0 and main(argv + ["--plot", str(png)]) == 0  # its own plot: replaced


def test_preset_without_offline_weights_asks_for_random_weights(tmp_path):
    from argparse import Namespace

    from compactvlm.commands import bench

    args = Namespace(model="llava-1.5-7b", compressor=["stf:k=2,E=1"], batch=1, device="cpu", dtype="auto",
                     random_weights=False, flops_only=False, threads=1, warmup=0, repeats=1, decode_tokens=0,
                     text_tokens=40, question="q", json=str(tmp_path / "x.json"), plot=None)
    with pytest.raises(CompactVLMError) as e:
        bench.run(args)
    assert "no real weights" in e.value.problem and "--random-weights" in e.value.fix


def test_prefill_flops_of_a_real_model_match_counting_its_own_llm():
    """The helper the demo/viz app reads (meta copy of the LLM) counts what the real LLM's prefill costs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from compactvlm.efficiency.flops import prefill_flops
    from compactvlm.testing import tiny_vlm
    from compactvlm.viz.app import prefill_flops as app_prefill_flops

    model = tiny_vlm("stf", k=2, E=1)
    ids = torch.tensor([model.prompt_ids("what is in the image")])
    embeds = model.merge(ids, torch.zeros(1, model.num_image_tokens(), model.llm_dim))
    with torch.inference_mode(), FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        model.llm(inputs_embeds=embeds, logits_to_keep=1)
    assert prefill_flops(model, "what is in the image") == fc.get_total_flops() > 0
    assert app_prefill_flops(model, "what is in the image") == fc.get_total_flops()


def test_flop_counter_allows_autograd_grad_inside():
    """MaskInversion optimises inside the forward (torch.autograd.grad); FlopCounterMode's module tracker breaks
    that, our total-only counter does not, and counts the same matmul FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from compactvlm.efficiency.flops import flop_counter

    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)

    def step():
        (g,) = torch.autograd.grad(lin(x).square().sum(), x)
        return g

    with pytest.raises(RuntimeError):
        with FlopCounterMode(display=False):
            step()
    with flop_counter() as fc:
        step()
    # forward 4x8x8 matmul + the input-gradient matmul of the same size, 2 FLOPs per multiply-add
    assert fc.get_total_flops() == 2 * (2 * 4 * 8 * 8)


def test_answers_and_peer_modes_refuse_bad_inputs_before_loading(tmp_path, capsys):
    assert main(["bench", "--answers", str(tmp_path / "nowhere")]) == 2
    assert main(["bench", "--answers", str(tmp_path), "--limit", "0"]) == 2
    assert main(["bench", "--answers", str(tmp_path), "--checkpoint-dir", str(tmp_path)]) == 2
    assert main(["bench", "--peer", "--checkpoint-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--limit must be >= 1" in err and "full-mlp2x" in err
