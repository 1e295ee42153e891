"""The distillation objective (`distillation_loss`) against values worked out by hand."""
import math

import pytest
import torch

from tdrm.diffusion.losses import distillation_loss, error_weights, loss_weights, sample_mse
from tdrm.diffusion.schedules import Schedule

# alpha_bar at t = 0, 1, 2, 3: SNR = ab / (1 - ab) = inf, 1, 9, 1/3
SCHED = Schedule(torch.tensor([1.0, 0.5, 0.9, 0.25], dtype=torch.float64), "hand")


def _pair():
    """Two trajectories (B=2, K=2, L=1, C=2); prediction 0. Per-row squared errors:
    sample 0 rows (1, 3), sample 1 rows (2, 0) -> per-sample MSE 2 and 1."""
    x0 = torch.tensor([[[[1.0, 1.0]], [[math.sqrt(3.0), math.sqrt(3.0)]]],
                       [[[math.sqrt(2.0), math.sqrt(2.0)]], [[0.0, 0.0]]]])
    return torch.zeros_like(x0), x0


def _ce_inputs():
    """Answer logits (B=2, N=1, V=2): [0, ln 3] -> p(class 1) = 3/4. Targets 1 and 0:
    CE = ln(4/3) and ln 4, mean ln(4/3 * 4) / 2 = ln(16/3) / 2."""
    logits = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, math.log(3.0)]]])
    return logits, torch.tensor([[1], [0]])


def test_min_snr_weights_clip_the_signal_to_noise_ratio_at_5():
    t = torch.tensor([1, 2, 3])
    assert torch.allclose(loss_weights(SCHED, t, "min_snr"), torch.tensor([1.0, 5.0, 1 / 3]))
    assert torch.equal(loss_weights(SCHED, t, "uniform"), torch.ones(3))
    with pytest.raises(ValueError, match="loss_weighting"):
        loss_weights(SCHED, t, "snr")


def test_shared_level_loss_uniform_and_min_snr_with_answer_ce():
    x0_hat, x0 = _pair()
    assert torch.allclose(sample_mse(x0_hat, x0), torch.tensor([2.0, 1.0]))
    logits, targets = _ce_inputs()
    ce = math.log(16 / 3) / 2
    out = distillation_loss(x0_hat, x0, torch.tensor([1, 2]), SCHED, weighting="uniform",
                            ce_logits=logits, ce_targets=targets, ce_weight=0.5)
    assert out.mse.item() == pytest.approx(1.5)  # (2 + 1) / 2
    assert out.ce.item() == pytest.approx(ce)
    assert out.loss.item() == pytest.approx(1.5 + 0.5 * ce)
    out = distillation_loss(x0_hat, x0, torch.tensor([1, 2]), SCHED, weighting="min_snr",
                            ce_logits=logits, ce_targets=targets, ce_weight=0.0)
    assert out.mse.item() == pytest.approx((1 * 2 + 5 * 1) / 2)  # weights min(SNR, 5) = 1, 5
    assert out.loss.item() == pytest.approx(3.5)


def test_per_row_levels_drop_clean_rows_from_both_terms():
    x0_hat, x0 = _pair()
    t = torch.tensor([[0, 2], [1, 3]])  # sample 0 row 0 is clean context
    # row logits (B, K, N=1, V=2): every row p(1) = 3/4; targets 0 everywhere except sample 0 row 0
    # (whose CE would be ln(4/3) but is masked); noised rows all have CE ln 4
    logits = torch.tensor([0.0, math.log(3.0)]).expand(2, 2, 1, 2)
    targets = torch.tensor([[[1], [0]], [[0], [0]]])
    out = distillation_loss(x0_hat, x0, t, SCHED, weighting="min_snr", ce_logits=logits,
                            ce_targets=targets, ce_weight=1.0)
    # noised rows: (sample 0, row 1) err 3 w 5; (1, 0) err 2 w 1; (1, 1) err 0 w 1/3 -> 17 / 3
    assert out.mse.item() == pytest.approx((5 * 3 + 1 * 2 + 0) / 3)
    assert out.ce.item() == pytest.approx(math.log(4.0))
    uni = distillation_loss(x0_hat, x0, t, SCHED, weighting="uniform", ce_logits=logits,
                            ce_targets=targets, ce_weight=1.0)
    assert uni.mse.item() == pytest.approx((3 + 2 + 0) / 3)


def test_every_row_ce_at_a_shared_level_averages_all_rows():
    x0_hat, x0 = _pair()
    logits = torch.tensor([0.0, math.log(3.0)]).expand(2, 2, 1, 2)
    targets = torch.tensor([[[1], [0]], [[0], [0]]])  # one row ln(4/3), three rows ln 4
    out = distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                            ce_logits=logits, ce_targets=targets, ce_weight=2.0)
    ce = (math.log(4 / 3) + 3 * math.log(4.0)) / 4
    assert out.ce.item() == pytest.approx(ce)
    assert out.loss.item() == pytest.approx(1.5 + 2 * ce)
    with pytest.raises(ValueError, match="ce_logits"):
        distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                          ce_logits=torch.zeros(2, 2), ce_targets=targets, ce_weight=1.0)


def test_error_weights_mark_the_cells_where_an_earlier_row_is_not_the_answer():
    # (B=2, K=3, N=2): sample 0 row 0 cell 1 and row 1 cell 0 differ from the last row; sample 1 none
    targets = torch.tensor([[[1, 2], [3, 4], [1, 4]], [[5, 6], [5, 6], [5, 6]]])
    w = error_weights(targets, 7.0)
    assert torch.equal(w, torch.tensor([[[1.0, 7.0], [7.0, 1.0], [1.0, 1.0]], [[1.0] * 2] * 3]))
    assert torch.equal(error_weights(targets, 1.0), torch.ones(2, 3, 2))
    with pytest.raises(ValueError, match="per-row targets"):
        error_weights(targets[:, 0], 7.0)
    with pytest.raises(ValueError, match="ce_error_weight"):
        error_weights(targets, 0.0)


def test_cell_weights_scale_each_cells_ce_without_renormalising():
    x0_hat, x0 = _pair()
    logits = torch.tensor([0.0, math.log(3.0)]).expand(2, 2, 1, 2)  # p(1) = 3/4 everywhere
    targets = torch.tensor([[[1], [0]], [[0], [0]]])  # sample 0 row 0: ln(4/3); the other rows ln 4
    w = torch.tensor([[[5.0], [1.0]], [[1.0], [1.0]]])
    out = distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                            ce_logits=logits, ce_targets=targets, ce_weight=1.0, ce_cell_weights=w)
    assert out.ce.item() == pytest.approx((5 * math.log(4 / 3) + 3 * math.log(4.0)) / 4)
    plain = distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                              ce_logits=logits, ce_targets=targets, ce_weight=1.0)
    ones = distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                             ce_logits=logits, ce_targets=targets, ce_weight=1.0,
                             ce_cell_weights=torch.ones(2, 2, 1))
    assert torch.equal(ones.loss, plain.loss)
    # per-row levels: the clean row (sample 0 row 0) stays out even with its weight 5
    rows = distillation_loss(x0_hat, x0, torch.tensor([[0, 2], [1, 3]]), SCHED, weighting="uniform",
                             ce_logits=logits, ce_targets=targets, ce_weight=1.0, ce_cell_weights=w)
    assert rows.ce.item() == pytest.approx(math.log(4.0))
    # per-cell levels (B, 1, L): a weighted noised cell counts 5 times, the clean cell not at all
    cells = distillation_loss(x0_hat, x0, torch.tensor([[[2]], [[0]]]), SCHED, weighting="uniform",
                              ce_logits=logits, ce_targets=targets, ce_weight=1.0, ce_cell_weights=w)
    assert cells.ce.item() == pytest.approx((5 * math.log(4 / 3) + math.log(4.0)) / 2)
    with pytest.raises(ValueError, match="ce_cell_weights"):
        distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                          ce_logits=logits[:, 0], ce_targets=targets[:, 0], ce_weight=1.0, ce_cell_weights=w)


def test_loss_gradient_reaches_the_prediction():
    x0_hat, x0 = _pair()
    x0_hat.requires_grad_(True)
    logits, targets = _ce_inputs()
    distillation_loss(x0_hat, x0, torch.tensor([1, 1]), SCHED, weighting="uniform",
                      ce_logits=logits, ce_targets=targets, ce_weight=1.0).loss.backward()
    # d/dx0_hat of mean_b mean_j (x0_hat - x0)^2 = 2 (x0_hat - x0) / (B * 4)
    assert torch.allclose(x0_hat.grad, -2 * x0 / 8)
