"""CudaRules keeps the dtypes CUDA's autocast gives, and its attention kernels' memory, on any device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorasmith.memory.autocast import CudaRules
from lorasmith.memory.tracking import LiveBytes


def test_cuda_autocast_dtypes():
    x = torch.randn(2, 8, 4, 4)
    weight = torch.randn(8, 8, requires_grad=True)
    with CudaRules(torch.float16):
        y = F.linear(x.flatten(2).transpose(1, 2), weight)
        assert y.dtype == torch.float16  # matmuls: half precision
        assert F.group_norm(y, 2).dtype == torch.float32  # CUDA runs norms in float32 (CPU autocast does not)
        assert F.layer_norm(y, (8,)).dtype == torch.float32
        assert y.softmax(-1).dtype == torch.float32
        assert F.interpolate(x.half(), scale_factor=2.0, mode="nearest").dtype == torch.float32
        assert (y * 2).dtype == torch.float16  # the rest as it comes


def test_weight_casts_are_cached_during_the_forward_only():
    weight = torch.randn(8, 8, requires_grad=True)  # a LoRA weight: float32, trained
    x = torch.randn(4, 8)
    with LiveBytes(block=1) as live, CudaRules(torch.float16) as rules:
        first = F.linear(x, weight)
        after_one = live.live
        second = F.linear(x, weight)  # the weight's half copy is reused: only the input's and the output
        assert live.live - after_one == 4 * 8 * 2 + 4 * 8 * 2
        assert first.dtype == second.dtype == torch.float16
        rules.end_forward()
    assert not rules._cache


def test_attention_on_meta_keeps_no_attention_matrix():
    q = torch.empty(1, 8, 4096, 64, device="meta", dtype=torch.float16, requires_grad=True)
    with LiveBytes() as live, CudaRules(torch.float16):
        out = F.scaled_dot_product_attention(q, q, q)
    matrix = 8 * 4096 * 4096 * 2
    assert out.shape == q.shape
    assert live.peak < matrix / 10  # the flash kernel keeps the output and a log-sum-exp per row
    with LiveBytes() as live:
        F.scaled_dot_product_attention(q, q, q)  # PyTorch's own choice on meta: the math path
    assert live.peak > matrix
