"""ARC's RL reward (tdrm/tasks/arc/rl.py) on hand canvases."""
import pytest
import torch

from tdrm.tasks.arc.grids import EOS, PAD
from tdrm.tasks.arc.rl import canvas_reward


def test_canvas_reward_is_exact_match_plus_the_share_of_output_cells_right():
    # a 3x3 canvas holding a 2x2 grid: colours (tokens >= 2), its EOS border, PAD elsewhere
    label = torch.tensor([[2, 3, EOS, 4, 5, EOS, EOS, EOS, PAD]])
    same = label.clone()
    one_wrong = label.clone()
    one_wrong[0, 0] = 7
    pad_wrong = label.clone()
    pad_wrong[0, 8] = 2  # a PAD position painted: not exact, every output cell still right
    r = canvas_reward(torch.cat([same, one_wrong, pad_wrong]), label.expand(3, -1), dense_weight=0.1)
    assert torch.allclose(r, torch.tensor([1.1, 0.1 * 7 / 8, 0.1]))
    assert torch.equal(canvas_reward(same, label, 0.0), torch.tensor([1.0]))


def test_canvas_reward_refuses_unknown_labels_and_shape_mismatch():
    with pytest.raises(ValueError, match="held-out row's unknown output"):
        canvas_reward(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), -1), 0.1)
    with pytest.raises(ValueError, match="differ in shape"):
        canvas_reward(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), 0.1)
