"""GPU-only checks (marked `gpu`, skipped without CUDA; kernels/gpu_check.sh runs them): real
shapes on the compiled kernels, not the interpreter, and torch.compile over the models' ops."""
import pytest
import torch

from kernels.adaln import adaln, adaln_reference
from kernels.attention import attention, attention_reference
from kernels.mlp_t import mlp_t, mlp_t_reference
from tdrm.models.layers import swiglu_width

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("TDRM_KERNELS", "triton")


@pytest.mark.parametrize("length", [36, 97, 325, 1300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_at_denoiser_lengths_matches_sdpa(length, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(8, 8, length, 64, device="cuda", dtype=dtype, generator=g, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    o = attention(q, k, v)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    o32 = attention_reference(q32, k32, v32)
    want = torch.autograd.grad(o32, (q32, k32, v32), do.float())
    ref_lp = attention_reference(q, k, v)
    ref_grads = torch.autograd.grad(ref_lp, (q, k, v), do)
    for got, w, lp in zip((o, *grads), (o32, *want), (ref_lp, *ref_grads)):
        err, ref_err = (got.float() - w).abs().max().item(), (lp.float() - w).abs().max().item()
        assert err <= 2 * ref_err + 2 * torch.finfo(dtype).eps * w.abs().max().item()


def test_mlp_t_and_adaln_at_paper_shapes():
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(768, 97, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    inter = swiglu_width(97, 4.0, 256)
    ws = [torch.randn(inter, 97, device="cuda", generator=g) / 97 ** 0.5,
          torch.randn(inter, 97, device="cuda", generator=g) / 97 ** 0.5,
          torch.randn(97, inter, device="cuda", generator=g) / inter ** 0.5]
    got, want = mlp_t(h, *ws), mlp_t_reference(h.float(), *ws)
    assert (got.float() - want).abs().max() <= 2 * (mlp_t_reference(h, *ws).float() - want).abs().max() + 0.05
    x = torch.randn(16, 1300, 256, device="cuda", generator=g)
    mod = torch.randn(16, 3 * 256, device="cuda", generator=g).chunk(3, -1)
    for a, b in zip(adaln(x, mod[0], mod[1], x.flip(1), mod[2]), adaln_reference(x, mod[0], mod[1], x.flip(1), mod[2])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torch_compile_over_the_triton_ops_matches_eager():
    from tdrm.config import Model
    from tdrm.models.trm import TRM
    model = TRM(Model(hidden=128, heads=2, T=2, n=2, n_sup=2, prefix=16, multiple_of=64), cells=81, vocab=11).cuda()
    tokens = torch.randint(0, 11, (32, 81), device="cuda")

    def step():
        x = model.input_embedding(tokens)
        y, z = model.initial_state(32)
        return model.step(y, z, x)[2]

    eager = step()
    compiled = torch.compile(step)()
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
