import math

import pytest
import torch

from tdrm.config import Model
from tdrm.models.layers import Block, rms_norm, swiglu_width, trunc_normal_
from tdrm.models.losses import stablemax_cross_entropy, stablemax_log_probs, trm_loss
from tdrm.models.trm import TRM
from tdrm.train.teacher import halting

CFG = Model(hidden=16, T=3, n=2, n_sup=3, prefix=2, multiple_of=8, heads=2)


def test_rms_norm_has_no_gain_and_unit_rms():
    x = torch.randn(3, 5, 8) * 7
    y = rms_norm(x)
    assert torch.allclose(y.square().mean(-1), torch.ones(3, 5), atol=1e-4)
    assert not any(True for _ in Block(8, 5, "mlp_t", 2, 4, 8, 1e-5).parameters() if _.dim() == 1)


def test_swiglu_width_matches_trm():
    assert swiglu_width(512, 4, 256) == 1536


def test_trunc_normal_has_requested_std():
    t = trunc_normal_(torch.empty(200_000), 0.5, torch.Generator().manual_seed(0))
    assert abs(t.std().item() - 0.5) < 0.01 and t.abs().max() <= 2 * 0.5 / 0.8796 + 1e-6


def test_mlp_t_mixes_along_the_sequence_axis():
    blk = Block(8, 5, "mlp_t", 2, 4.0, 8, 1e-5)
    h = torch.randn(1, 5, 8)
    h2 = h.clone()
    h2[0, 4] += 1.0  # change only position 4
    out, out2 = blk(h), blk(h2)
    assert not torch.allclose(out[0, 0], out2[0, 0])  # position 0 sees position 4


@pytest.mark.parametrize("mixer,pos", [("mlp_t", "none"), ("attention", "rope"), ("attention", "learned")])
def test_shapes_and_heads_init(mixer, pos):
    m = TRM(Model(**{**CFG.__dict__, "mixer": mixer, "pos": pos}), cells=16, vocab=6)
    tr = m.trace(torch.randint(1, 6, (3, 16)))
    assert tr.y.shape == (3, 3, 18, 16) and tr.z.shape == tr.y.shape
    assert tr.logits.shape == (3, 3, 16, 6) and tr.q.shape == (3, 3)
    # q_head starts at weight 0, bias -5: nothing halts at first
    assert torch.allclose(tr.q, torch.full_like(tr.q, -5.0))


def test_init_buffers_fixed_and_not_trained():
    m = TRM(CFG, 16, 6)
    names = {n for n, _ in m.named_parameters()}
    assert "y_init" not in names and "z_init" not in names
    assert torch.equal(TRM(CFG, 16, 6).y_init, m.y_init)  # seeded


def test_recursion_no_grad_then_grad_through_last_cycle(monkeypatch):
    m = TRM(CFG, 16, 6)
    calls = []
    real_f = m.f

    def spy(h, inj):
        calls.append(torch.is_grad_enabled())
        return real_f(h, inj)

    monkeypatch.setattr(m, "f", spy)
    tokens = torch.randint(1, 6, (2, 16))
    y, z = m.initial_state(2)
    y, z, logits, q = m.step(y, z, m.input_embedding(tokens))
    per_cycle = CFG.n + 1
    assert calls == [False] * (CFG.T - 1) * per_cycle + [True] * per_cycle
    logits.sum().backward()
    # the injection x = embedding gets gradient only through the last cycle
    assert m.embed.grad is not None and m.embed.grad.abs().sum() > 0


def test_stablemax_is_a_distribution_and_matches_hand_case():
    x = torch.tensor([[0.0, 1.0, -1.0]])
    p = stablemax_log_probs(x).exp()
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(p[0], s / s.sum())
    loss = stablemax_cross_entropy(x[None], torch.tensor([[1]]))
    assert math.isclose(loss.item(), -math.log(2 / 3.5), rel_tol=1e-9)


def test_trm_loss_counts_solved_grids_for_q():
    logits = torch.zeros(2, 3, 4)
    logits[0, [0, 1, 2], [1, 2, 3]] = 5.0  # puzzle 0 correct
    labels = torch.tensor([[1, 2, 3], [1, 2, 3]])
    loss, stats, solved = trm_loss(logits, torch.zeros(2), labels)
    assert solved.tolist() == [True, False] and stats["exact_acc"] == 0.5
    assert loss.item() > 0


def test_halting_rules():
    g = torch.Generator().manual_seed(0)
    steps = torch.tensor([1, 1, 3, 2])
    q = torch.tensor([1.0, -1.0, -1.0, 1.0])
    assert halting(q, steps, 3, 0.0, g).tolist() == [True, False, True, True]
    # full exploration forces at least 2 steps before a q-halt; N_sup still always halts
    h = halting(torch.ones(100), torch.ones(100, dtype=torch.long), 3, 1.0, g)
    assert not h.any()
    h = halting(torch.ones(100), torch.full((100,), 3), 3, 1.0, g)
    assert h.all()
    # with 10% exploration some, not all, q-halts at step 2 are delayed
    h = halting(torch.ones(2000), torch.full((2000,), 2), 16, 0.1, g)
    assert 0.02 < (~h).float().mean() < 0.15


def test_trace_inner_reproduces_trace_states_through_the_one_cycle():
    """`trace(inner=True)` records every latent update through the model's own `cycle`: its step
    states and logits equal `trace()`'s, the last recorded z of each step is that step's z, and
    the inner z's follow z = f(z, y + x) from the recorded states."""
    model = TRM(CFG, 16, 6).eval()
    tokens = torch.randint(1, 6, (3, 16), generator=torch.Generator().manual_seed(0))
    plain, inner = model.trace(tokens), model.trace(tokens, inner=True)
    assert torch.equal(plain.y, inner.y) and torch.equal(plain.z, inner.z) and torch.equal(plain.logits, inner.logits)
    assert inner.z_inner.shape == (CFG.n_sup, CFG.T * CFG.n, 3, 16 + CFG.prefix, CFG.hidden)
    assert torch.equal(inner.z_inner[:, -1], inner.z)
    with torch.no_grad():
        x = model.input_embedding(tokens)
        y0, z0 = model.initial_state(3)
        assert torch.equal(model.f(z0, y0 + x), inner.z_inner[0, 0])
        y1, z1 = model.cycle(y0, z0, x)
        assert torch.equal(z1, inner.z_inner[0, CFG.n - 1]) and torch.equal(y1, model.update_y(y0, z1))


def test_puzzle_embedding_table_is_what_tells_identical_inputs_apart():
    """ARC's mechanism: with `model.puzzles` rows, the same tokens under different puzzle ids must map
    to different answers, learnable only through the (zero-initialised) puzzle embeddings, trained by
    sparse sign-SGD; with the table frozen the ids cannot be told apart."""
    import dataclasses

    from tdrm.train.optim import SparseSignSGD
    cfg = dataclasses.replace(CFG, puzzles=4, mixer="attention", pos="rope", T=2, n=1)
    tokens = torch.ones(8, 6, dtype=torch.long)  # one input for every sample
    ids = torch.arange(8) % 3  # rows 0-2 used, row 3 never
    target = (ids + 1)[:, None].expand(-1, 6)  # (8, 6): the answer is the id's colour

    def train(learn_table: bool) -> float:
        torch.manual_seed(0)
        m = TRM(cfg, cells=6, vocab=5)
        assert not m.puzzle_emb.any()
        rest = [p for n, p in m.named_parameters() if n != "puzzle_emb"]
        opt, sign = torch.optim.AdamW(rest, lr=3e-3), SparseSignSGD([m.puzzle_emb], lr=1e-2)
        for _ in range(150):
            y, z = m.initial_state(8)
            _, _, logits, _ = m(y, z, tokens, ids)
            loss = stablemax_cross_entropy(logits.float(), target).mean()
            opt.zero_grad()
            sign.zero_grad()
            loss.backward()
            opt.step()
            if learn_table:
                sign.step()
        assert not m.puzzle_emb[3].any()  # a row no batch used is untouched (no decay either)
        with torch.no_grad():
            y, z = m.initial_state(8)
            return float((m(y, z, tokens, ids)[2].argmax(-1) == target).float().mean())
    assert train(True) == 1.0
    assert train(False) <= 0.5  # one output for all three ids: at most the share of the most common id
    m = TRM(cfg, cells=6, vocab=5)
    with pytest.raises(ValueError, match="pass the puzzle ids"):
        m.input_embedding(tokens)
    with pytest.raises(ValueError, match="puzzle ids must be in 0..3"):
        m.input_embedding(tokens, torch.full((8,), 4))
    with pytest.raises(ValueError, match="need a prefix slot"):
        TRM(dataclasses.replace(CFG, puzzles=2, prefix=0), cells=6, vocab=5)


def test_sparse_sign_sgd_updates_used_rows_by_the_sign_with_decay():
    from tdrm.train.optim import SparseSignSGD
    p = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 4.0], [0.5, 0.5]]))
    p.grad = torch.tensor([[0.3, -1e-6], [0.0, 0.0], [-2.0, 0.0]])
    SparseSignSGD([p], lr=0.1, weight_decay=0.5).step()
    want = torch.tensor([[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1], [3.0, 4.0], [0.5 * 0.95 + 0.1, 0.5 * 0.95]])
    torch.testing.assert_close(p.data, want)
