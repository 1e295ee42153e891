import pytest
import torch

from tdrm.data.dataset import build, load_split
from tdrm.eval.teacher import evaluate
from tdrm.tracking.base import MemoryTracker, Tracker
from tdrm import checkpoint
from tdrm.train.optim import EMA, AdamATan2, warmup_constant
from tdrm.train.teacher import train_teacher

from ..conftest import tiny_params


def test_warmup_then_constant():
    assert warmup_constant(0, 1.0, 10) == pytest.approx(0.1)
    assert warmup_constant(9, 1.0, 10) == 1.0 and warmup_constant(500, 1.0, 10) == 1.0


def test_warmup_cosine_schedule():
    from tdrm.train.optim import warmup_cosine
    assert warmup_cosine(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 1.0, 10, 110) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert warmup_cosine(110, 1.0, 10, 110) == pytest.approx(0.1) == warmup_cosine(500, 1.0, 10, 110)


def test_ema_update_rule():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, 0.9)
    before = ema.model.weight.clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * m.weight)
    assert not ema.model.weight.requires_grad
    with pytest.raises(ValueError):
        EMA(m, 1.0)


def test_ema_warmup_decay_schedule():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, 0.999, warmup=True)
    for u, d in enumerate([1 / 10, 2 / 11, 3 / 12]):  # min(0.999, (1 + u) / (10 + u))
        before = ema.model.weight.clone()
        with torch.no_grad():
            m.weight.add_(1.0)
        ema.update(m)
        assert torch.allclose(ema.model.weight, d * before + (1 - d) * m.weight), u
    ema.load_state_dict(ema.state_dict(), updates=10_000)
    before = ema.model.weight.clone()
    ema.update(m)
    assert torch.allclose(ema.model.weight, 0.999 * before + 0.001 * m.weight)


def test_adam_atan2_descends():
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = AdamATan2([w], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        w.square().sum().backward()
        opt.step()
    assert w.abs().max() < 0.1


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    p = tiny_params()
    d = tmp_path_factory.mktemp("tiny4")
    build(p.data, d, progress=False)
    return p, d


def _with_teacher(p, **kw):
    import dataclasses
    return dataclasses.replace(p, teacher=dataclasses.replace(p.teacher, **kw))


class Crash(Tracker):
    def __init__(self, at):
        self.at = at

    def log_scalar(self, name, value, step):
        if step == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_kill_gives_identical_weights(tiny4, tmp_path):
    p, d = tiny4
    p = _with_teacher(p, steps=12, ckpt_every=4, eval_every=0)
    full = train_teacher(p, d, tmp_path / "full.pt", resume_path=tmp_path / "r1.pt", progress=False, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(p, d, tmp_path / "part.pt", resume_path=tmp_path / "r2.pt", tracker=Crash(10),
                      progress=False, log_every=1)
    assert (tmp_path / "r2.pt").exists() and not (tmp_path / "part.pt").exists()
    mid = checkpoint.load(tmp_path / "r2.pt")
    assert mid["step"] == 8
    # the carry crosses optimizer steps detached: no graph is kept alive between steps
    assert not mid["carry"]["y"].requires_grad and not mid["carry"]["z"].requires_grad
    assert mid["carry"]["steps"].max() <= p.teacher.model.n_sup
    train_teacher(p, d, tmp_path / "part.pt", resume_path=tmp_path / "r2.pt", progress=False, log_every=1)
    a, b = checkpoint.load(tmp_path / "full.pt"), checkpoint.load(tmp_path / "part.pt")
    assert a["step"] == b["step"] == 12 == full["steps"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert not (tmp_path / "r2.pt").exists()  # the resume file is removed once finished


def test_resume_file_of_another_config_is_ignored(tiny4, tmp_path, capsys):
    p, d = tiny4
    p1 = _with_teacher(p, steps=4, ckpt_every=2, eval_every=0)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(p1, d, tmp_path / "a.pt", resume_path=tmp_path / "r.pt", tracker=Crash(3), progress=False, log_every=1)
    p2 = _with_teacher(p1, lr=5e-4)
    train_teacher(p2, d, tmp_path / "a.pt", resume_path=tmp_path / "r.pt", progress=False, log_every=1)
    assert "another config" in capsys.readouterr().out


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        checkpoint.load(tmp_path / "junk.pt")


@pytest.mark.slow
def test_tiny_trm_learns_4x4(tmp_path):
    """A tiny TRM really learns: >= 90% exact on held-out 4x4 puzzles (different classes)."""
    p = tiny_params({"teacher": LEARN})
    build(p.data, tmp_path, progress=False)
    tracker = MemoryTracker()
    res = train_teacher(p, tmp_path, tmp_path / "t.pt", tracker=tracker, progress=False)
    from tdrm.checkpoint import load_teacher
    model, _ = load_teacher(tmp_path / "t.pt")
    test = load_split(tmp_path, "test")
    acc = evaluate(model, test)["exact_accuracy"]
    assert acc >= 0.9, (acc, res["history"][-1])
    losses = [v for _, v in tracker.scalars["train.lm_loss"]]
    assert losses[-1] < 0.5 * losses[0]


LEARN = {"steps": 1000, "eval_every": 0}  # about 20 s on 2 cores
