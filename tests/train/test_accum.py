"""Gradient accumulation and bf16 autocast of the training loops (issue 15's GPU options): accum 2
ends with the weights of accum 1 up to fp32 rounding; bf16 autocast trains; bad settings refused."""
import pytest
import torch

from tdrm import checkpoint

from ..conftest import tiny_params, tiny_traces

RTOL, ATOL = 1e-4, 1e-5  # short runs: rounding of the micro-batch sums, as in test_dist.py


def _close(a_path, b_path):
    a, b = checkpoint.load(a_path), checkpoint.load(b_path)
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), rtol=RTOL, atol=ATOL), (part, k)
    return a, b


def test_teacher_accumulation_equals_one_batch(tmp_path):
    from tdrm.data.dataset import build
    from tdrm.train.teacher import train_teacher
    base = {"steps": 8, "eval_every": 0, "warmup": 4}
    build(tiny_params().data, tmp_path, progress=False)
    train_teacher(tiny_params({"teacher": base}), tmp_path, tmp_path / "one.pt", progress=False)
    train_teacher(tiny_params({"teacher": {**base, "accum": 4}}), tmp_path, tmp_path / "four.pt", progress=False)
    one, four = _close(tmp_path / "one.pt", tmp_path / "four.pt")
    assert one["history"][-1]["lm_loss"] == pytest.approx(four["history"][-1]["lm_loss"], rel=1e-4)
    bf = train_teacher(tiny_params({"teacher": base, "common": {"amp": "bf16"}}), tmp_path, tmp_path / "bf16.pt",
                       progress=False, log_every=1)
    assert bf["history"][-1]["lm_loss"] < bf["history"][0]["lm_loss"]  # bf16 autocast trains the teacher too
    with pytest.raises(ValueError, match="teacher.accum = 3 must be >= 1 and divide the per-rank batch 64"):
        train_teacher(tiny_params({"teacher": {**base, "accum": 3}}), tmp_path, tmp_path / "x.pt", progress=False)


def test_distill_accumulation_equals_one_batch_and_bf16_autocast_trains(tmp_path):
    from tdrm.checkpoint import load_teacher
    from tdrm.train.distill import train_distill
    tiny_traces(tmp_path, 30, 20)
    teacher, _ = load_teacher(tmp_path / "t.pt")
    base = {"steps": 12, "eval_every": 0, "self_correct_prob": 0.5}  # error-correcting batches in the mix
    train_distill(tiny_params({"distill": base}), tmp_path / "tr", teacher, tmp_path / "one.pt", progress=False)
    train_distill(tiny_params({"distill": {**base, "accum": 2}}), tmp_path / "tr", teacher, tmp_path / "two.pt",
                  progress=False)
    _close(tmp_path / "one.pt", tmp_path / "two.pt")
    with pytest.raises(ValueError, match="distill.accum = 5 must be >= 1 and divide the per-rank batch 32"):
        train_distill(tiny_params({"distill": {**base, "accum": 5}}), tmp_path / "tr", teacher, tmp_path / "x.pt",
                      progress=False)
    # bf16 autocast: a different computation (not the fp32 weights), and it learns: the answer CE falls
    # (fp32 on this tiny run: 1.768 -> 1.711 over 40 steps; the MSE barely moves that early)
    over = {"distill": {**base, "steps": 40}}
    res = train_distill(tiny_params({**over, "common": {"amp": "bf16"}}), tmp_path / "tr", teacher,
                        tmp_path / "bf16.pt", progress=False, log_every=10)
    ce = [h["ce"] for h in res["history"]]
    assert ce[-1] < 0.98 * ce[0], ce
    train_distill(tiny_params(over), tmp_path / "tr", teacher, tmp_path / "fp32.pt", progress=False)
    a, b = checkpoint.load(tmp_path / "fp32.pt")["model"], checkpoint.load(tmp_path / "bf16.pt")["model"]
    assert any(not torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)  # autocast really ran
    with pytest.raises(ValueError, match="common.amp must be one of"):
        train_distill(tiny_params({"distill": base, "common": {"amp": "fp8"}}), tmp_path / "tr", teacher,
                      tmp_path / "x.pt", progress=False)
