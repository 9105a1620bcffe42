"""The blindness gauge in training: every validation pass also scores the same samples with each image replaced by
another sample's image (shuffled) and by a blank image, and logs the gap and the vision/text token norms."""

import json

import pytest
import torch

from compactvlm.errors import CompactVLMError
from compactvlm.train import train
from compactvlm.train.fixtures import tiny_train_config
from compactvlm.train.trainer import BLIND_GAP, Trainer, gauge_summary


def _events(run_dir, kind):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in l]


@pytest.mark.parametrize("cache", [True, False])
def test_every_validation_pass_logs_the_controls(tmp_path, cache, capsys):
    cfg = tiny_train_config(tmp_path, [f"cache_features={str(cache).lower()}", "eval.every_steps=2"])
    res = train(cfg)
    evals = _events(res.output_dir, "eval")
    assert len(evals) >= 3
    for e in evals:
        for k in ("val_loss_shuffled", "val_loss_blank", "gap_shuffled", "gap_blank", "image_token_norm",
                  "text_embed_norm"):
            assert k in e, k
        assert e["gap_shuffled"] == pytest.approx(e["val_loss_shuffled"] - e["val_loss"])
        assert e["image_token_norm"] > 0 and e["text_embed_norm"] > 0
    end = _events(res.output_dir, "end")[-1]
    assert len(end["val_controls"]) == len(evals)
    assert "blindness gauge: val loss real" in capsys.readouterr().err


def test_controls_replace_every_image(tmp_path):
    """The shuffled control gives each sample another sample's features (never its own), the blank control the
    same features for every sample; with the feature cache on or off."""
    for cache in (True, False):
        cfg = tiny_train_config(tmp_path / str(cache), [f"cache_features={str(cache).lower()}"])
        t = Trainer(cfg)
        t.setup()
        from compactvlm.data.llava import collate_llava

        n = len(t.val_ds)
        b = collate_llava([t.val_ds[i] for i in range(4)], pad_id=t.vlm.tokenizer.pad_token_id)
        enc = lambda x: t.model.image_tokens(x.get("pixel_values"), x.get("features"))  # noqa: E731
        with torch.no_grad():
            real = enc(t._inputs(b, t.val_cache))
            shuf = enc(t._control_inputs(b, "shuffled", t.val_cache))
            blank = enc(t._control_inputs(b, "blank", t.val_cache))
            others = collate_llava([t.val_ds[(i + n // 2) % n] for i in range(4)], pad_id=t.vlm.tokenizer.pad_token_id)
            want = enc(t._inputs(others, None))
        for i in range(4):
            assert not torch.allclose(shuf[i], real[i]), "the shuffled control leaked the sample's own image"
        torch.testing.assert_close(shuf, want, rtol=1e-4, atol=1e-5)
        assert all(torch.allclose(blank[0], blank[i]) for i in range(4))
        assert not torch.allclose(blank[0], real[0])
        t.logger.close()


def test_gauge_summary_verdicts():
    assert "does not use the image" in gauge_summary(0.66, {"val_loss_shuffled": 0.665, "gap_shuffled": 0.005})
    assert "uses the image" in gauge_summary(1.5, {"val_loss_shuffled": 1.84, "gap_shuffled": 0.34})
    assert BLIND_GAP > 0
    # the grounding objective's loss is an MSE, not nats: no blind verdict from the nat threshold, the ratio instead
    # (this is the grounding stage of the probe of 2026-12-05, whose shuffled loss is 3x its real one)
    line = gauge_summary(0.0054, {"val_loss_shuffled": 0.0164, "gap_shuffled": 0.011}, "grounding")
    assert "does not use the image" not in line and "uses the image" not in line
    assert "grounding loss is 3.0x the real images'" in line


def test_bad_controls_rejected(tmp_path):
    with pytest.raises(CompactVLMError, match="eval.controls"):
        tiny_train_config(tmp_path, ["eval.controls=[shufled]"])
