"""CUDA's mixed precision, on any device: so that a step on meta (or CPU) tensors keeps the dtypes a GPU would.

`torch.autocast("cuda")` cannot run without a GPU, and CPU autocast follows other rules: it keeps
group_norm, layer_norm, softmax and nearest upsampling in half precision, where CUDA runs them in
float32 (their inputs and outputs then take twice the bytes). `CudaRules` is a function mode that
applies CUDA's own rules: the op lists of aten/src/ATen/autocast_mode.cpp (lower precision, fp32,
fp32-output and promote), and its cache of the half-precision copies of float32 weights that train
(the LoRA's), kept while the forward runs.

It also stands in for CUDA's choice of attention kernel on meta tensors: the flash kernel for fp16
and bf16 (or the memory-efficient one for fp32 or a mask), which keep only the output and a
log-sum-exp per row for the backward; meta tensors would otherwise take the math path and hold
the whole attention matrix. Real CPU tensors keep PyTorch's own choice (the CPU flash kernel, which
keeps the same two tensors).

It is meant to stay on through the backward too: the ops autograd runs there never pass through a
function mode, only a recomputed forward (gradient checkpointing) does, and it must be cast as the
forward was, as torch.utils.checkpoint does on a GPU. `end_forward()` drops the weight cache as
leaving `torch.autocast` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lorasmith.memory.tracking import tensors_in

T = torch.Tensor

# aten/src/ATen/autocast_mode.cpp (PyTorch 2.13), as the Python callables that reach those ops.
LOWER_PRECISION = {
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.prelu,
    torch.addmm, torch.addmv, torch.addr, torch.matmul, torch.einsum, torch.mm, torch.mv, torch.addbmm,
    torch.baddbmm, torch.bmm, torch.chain_matmul, F.scaled_dot_product_attention,
    T.addmm, T.addmv, T.addr, T.matmul, T.__matmul__, T.__rmatmul__, T.mm, T.mv, T.addbmm, T.baddbmm, T.bmm,
}
FP32 = {
    torch.acos, torch.asin, torch.cosh, torch.erfinv, torch.exp, torch.expm1, torch.log, torch.log10, torch.log2,
    torch.log1p, torch.reciprocal, torch.rsqrt, torch.sinh, torch.tan, torch.pow, F.softplus, F.layer_norm,
    torch.layer_norm, F.group_norm, torch.group_norm, F.rms_norm, F.cosine_similarity, F.poisson_nll_loss,
    F.cosine_embedding_loss, F.nll_loss, F.hinge_embedding_loss, F.kl_div, F.l1_loss, F.smooth_l1_loss,
    F.huber_loss, F.mse_loss, F.margin_ranking_loss, F.multilabel_margin_loss, F.soft_margin_loss,
    F.triplet_margin_loss, F.multi_margin_loss, F.binary_cross_entropy_with_logits, torch.dist, F.pdist,
    torch.cdist, torch.renorm, torch.logsumexp,
    T.acos, T.asin, T.cosh, T.erfinv, T.exp, T.expm1, T.log, T.log10, T.log2, T.log1p, T.reciprocal, T.rsqrt,
    T.sinh, T.tan, T.pow, T.__pow__, T.__rpow__, T.dist, T.renorm, T.logsumexp,
}
FP32_OUTPUT = {  # fp32_set_opt_dtype: computed and returned in float32 unless a dtype is given
    torch.prod, torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, torch.cumprod, torch.cumsum,
    torch.sum, torch.linalg.vector_norm, torch.linalg.matrix_norm,
    T.prod, T.softmax, T.log_softmax, T.cumprod, T.cumsum, T.sum,
}
PROMOTE = {torch.addcdiv, torch.addcmul, torch.atan2, F.bilinear, torch.cross, torch.dot, torch.vdot,
           F.grid_sample, torch.tensordot, torch.scatter_add, T.addcdiv, T.addcmul, T.atan2, T.cross, T.dot,
           T.vdot, T.scatter_add, T.index_put}
# F.interpolate is Python around upsample_*: these modes reach fp32 ops, the others (area) run as they are.
FP32_INTERPOLATE_MODES = {"nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear"}
_HANDLED = LOWER_PRECISION | FP32 | FP32_OUTPUT | PROMOTE | {F.interpolate, F.scaled_dot_product_attention}


def _eligible(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


class CudaRules(TorchFunctionMode):
    """CUDA's autocast to `autocast` (float16 or bfloat16; None: off) and its attention kernels, on any device."""

    def __init__(self, autocast: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = autocast
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, its copy)
        self._caching = True

    def end_forward(self) -> None:
        """Leave the autocast region: the cached weight copies go (those saved for the backward stay)."""
        self._cache.clear()
        self._caching = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _HANDLED:  # most calls (a tensor's .shape, .view, +): straight through
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        if self.dtype is not None:
            args, kwargs = self._autocast(func, args, kwargs)
        if func is F.scaled_dot_product_attention:
            return _attention(func, args, kwargs)
        return func(*args, **kwargs)

    def _autocast(self, func, args, kwargs):
        if func in LOWER_PRECISION:
            return self._cast_all((args, kwargs), self.dtype)
        if func in FP32 or (func is F.interpolate and kwargs.get("mode", "nearest") in FP32_INTERPOLATE_MODES):
            return self._cast_all((args, kwargs), torch.float32)
        if func in FP32_OUTPUT:
            if args and _eligible(args[0]) and kwargs.get("dtype") is None:
                kwargs["dtype"] = torch.float32
            return args, kwargs
        if func in PROMOTE:
            wide = any(v.dtype == torch.float32 for v in tensors_in(args, kwargs) if _eligible(v))
            return self._cast_all((args, kwargs), torch.float32 if wide else self.dtype)
        return args, kwargs

    def _cast_all(self, tree, dtype: torch.dtype):
        args, kwargs = tree
        return self._cast_value(args, dtype), {name: self._cast_value(v, dtype) for name, v in kwargs.items()}

    def _cast_value(self, value, dtype: torch.dtype):
        if isinstance(value, torch.Tensor):
            return self._cast(value, dtype) if _eligible(value) else value
        if isinstance(value, (list, tuple)):  # the arguments, or a list of tensors (einsum's, chain_matmul's)
            return type(value)(self._cast_value(item, dtype) for item in value)
        return value

    def _cast(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if tensor.dtype == dtype:
            return tensor
        # autocast's cache: only float32 leaves that train, the LoRA's weights (at::autocast::cached_cast)
        cacheable = (self._caching and dtype == self.dtype and tensor.dtype == torch.float32
                     and tensor.requires_grad and tensor.is_leaf and not tensor._is_view())
        if cacheable and id(tensor) in self._cache:
            return self._cache[id(tensor)][1]
        copy = tensor.to(dtype)
        if cacheable:
            self._cache[id(tensor)] = (tensor, copy)
        return copy


def _attention(func, args, kwargs):
    """scaled_dot_product_attention through the kernel CUDA would pick, for meta tensors."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    bound = dict(zip(names, args)) | kwargs
    query, key, value = bound["query"], bound["key"], bound["value"]
    # a mask (the text encoders' 77 tokens: a few KB either way) or grouped heads: as PyTorch runs it
    if query.device.type != "meta" or query.dim() != 4 or bound.get("attn_mask") is not None \
            or bound.get("enable_gqa"):
        return func(*args, **kwargs)
    dropout, causal, scale = bound.get("dropout_p", 0.0), bound.get("is_causal", False), bound.get("scale")
    head = query.shape[-1]
    if query.dtype in (torch.float16, torch.bfloat16) and head % 8 == 0 and head <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout, causal, False,
                                                                   scale=scale)[0]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, needs_grad, dropout,
                                                                   causal, scale=scale)[0]
