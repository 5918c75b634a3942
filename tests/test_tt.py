"""TTLinear: the math of the TT layer (docs/tensorized-adapters.md, "The TT layer")."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedtt_flwr import TTLinear, tt_num_params, tt_shape
from fedtt_flwr.tt import PRESET_SHAPES, balanced_factors


def explicit_dense(layer: TTLinear) -> torch.Tensor:
    """W(i_1..i_d) = G_1[:, i_1, :] @ ... @ G_d[:, i_d, :], entry by entry, reshaped row-major."""
    cores = [c.detach().double() for c in layer.cores]
    full = torch.empty(layer.shape, dtype=torch.float64)
    for idx in itertools.product(*(range(n) for n in layer.shape)):
        m = cores[0][:, idx[0], :]
        for k in range(1, len(cores)):
            m = m @ cores[k][:, idx[k], :]
        full[idx] = m.item()
    return full.reshape(layer.in_features, layer.out_features)


@pytest.mark.parametrize("in_f,out_f,shape", [(6, 8, (2, 3, 4, 2)), (12, 4, (3, 4, 2, 2)), (5, 7, (5, 7))])
def test_to_dense_equals_explicit_contraction(in_f, out_f, shape):
    torch.manual_seed(0)
    layer = TTLinear(in_f, out_f, shape=shape, rank=3)
    assert torch.allclose(layer.to_dense().double(), explicit_dense(layer), atol=1e-6)


@pytest.mark.parametrize("mode", ["rebuild", "contract"])
@pytest.mark.parametrize("in_f,out_f", [(384, 64), (64, 384), (768, 64), (10, 3)])
def test_forward_is_matmul_plus_bias_and_grads_reach_every_core(mode, in_f, out_f):
    torch.manual_seed(1)
    layer = TTLinear(in_f, out_f, rank=4, forward_mode=mode)
    x = torch.randn(3, 5, in_f)
    y = layer(x)
    ref = x @ layer.to_dense() + layer.bias
    assert y.shape == (3, 5, out_f)
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-4)
    y.pow(2).sum().backward()
    for k, core in enumerate(layer.cores):
        assert core.grad is not None and core.grad.abs().sum() > 0, f"core {k} got no gradient"
    assert layer.bias.grad.abs().sum() > 0


def test_rebuild_and_contract_give_the_same_gradients():
    torch.manual_seed(2)
    a = TTLinear(384, 64, rank=5, forward_mode="rebuild")
    b = TTLinear(384, 64, rank=5, forward_mode="contract")
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 384)
    a(x).sin().sum().backward()
    b(x).sin().sum().backward()
    for ca, cb in zip(a.cores, b.cores, strict=True):
        assert torch.allclose(ca.grad, cb.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hidden,expected", [(768, 780), (1024, 840), (4096, 1100)])
def test_preset_parameter_counts_match_method_md(hidden, expected):
    for in_f, out_f in [(hidden, 64), (64, hidden)]:
        layer = TTLinear(in_f, out_f, rank=5, bias=False)
        assert layer.shape == PRESET_SHAPES[hidden]
        assert sum(c.numel() for c in layer.cores) == expected == tt_num_params(layer.shape, 5)


def test_cores_are_direct_parameters_with_tt_shapes():
    layer = TTLinear(64, 768, rank=5)
    names = [n for n, _ in layer.named_parameters()]
    assert names == [f"core_{k}" for k in range(5)] + ["bias"]
    ranks = [1, 5, 5, 5, 5, 1]
    for k, core in enumerate(layer.cores):
        assert core.shape == (ranks[k], layer.shape[k], ranks[k + 1])


@pytest.mark.parametrize("in_f,out_f", [(384, 64), (576, 64), (2048, 64), (3072, 64), (64, 2560), (384, 384)])
def test_automatic_shape_fits_is_balanced_and_deterministic(in_f, out_f):
    shape = tt_shape(in_f, out_f)
    assert math.prod(shape) == in_f * out_f
    assert 4 <= len(shape) <= 8
    assert all(2 <= n <= 16 for n in shape), shape
    assert shape == tt_shape(in_f, out_f)
    # the leading modes cover exactly the input dimension (needed by the contract forward)
    assert TTLinear(in_f, out_f, rank=2, forward_mode="contract").shape == shape


def test_balanced_factors_handles_primes_and_one():
    assert balanced_factors(1) == [1]
    assert balanced_factors(13) == [13]
    assert math.prod(balanced_factors(997 * 4)) == 997 * 4


def test_loretta_init_gives_dense_std_sigma():
    torch.manual_seed(3)
    in_f, out_f = 384, 64
    sigma = math.sqrt(1 / (in_f + out_f))
    stds = [TTLinear(in_f, out_f, rank=5).to_dense().std().item() for _ in range(40)]
    assert abs(sum(stds) / len(stds) / sigma - 1) < 0.25
    bias = TTLinear(in_f, out_f).bias
    assert bias.abs().max() <= 1 / math.sqrt(out_f)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="does not fit a 6x8 matrix"):
        TTLinear(6, 8, shape=(2, 2, 2))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        TTLinear(6, 8, rank=0)
    with pytest.raises(ValueError, match="forward_mode='contract' needs"):
        TTLinear(1024, 64, forward_mode="contract")  # the preset [4,8,8,8,8,4] does not split at 1024
    with pytest.raises(ValueError, match="expects last dim 6"):
        TTLinear(6, 8)(torch.randn(2, 5))


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_autocast_keeps_tt_math_in_fp32(amp):
    torch.manual_seed(4)
    layer = TTLinear(64, 384, rank=5)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=amp):
        y = layer(x)
        y_low = layer(x.to(amp))
    assert y.dtype == torch.float32
    assert torch.equal(y, layer(x))  # fp32 input: bit-identical to no autocast
    assert y_low.dtype == amp
    ref = x.to(amp).float() @ layer.to_dense() + layer.bias  # the same math in fp32, cast once at the end
    # at most one unit in the last place of the low-precision format away from the fp32 result
    assert torch.allclose(y_low.float(), ref.to(amp).float(), rtol=torch.finfo(amp).eps, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_backward_under_bf16_autocast():
    layer = TTLinear(384, 64, rank=5, device="cuda")
    x = torch.randn(8, 384, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and all(c.grad is not None for c in layer.cores)
    ref = x.float() @ layer.to_dense() + layer.bias
    assert torch.allclose(y.float(), ref, atol=3e-2, rtol=3e-2)


def test_auto_forward_mode_contracts_where_the_shape_allows():
    assert TTLinear(384, 64).forward_mode == "contract"
    assert TTLinear(64, 768).forward_mode == "contract"  # preset [8,8,12,8,8] splits at 64
    assert TTLinear(1024, 64).forward_mode == "rebuild"  # preset [4,8,8,8,8,4] does not split at 1024
