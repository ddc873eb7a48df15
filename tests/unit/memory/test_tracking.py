"""LiveBytes counts what operators allocate and free, as the CUDA caching allocator books it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorasmith.memory.meta_ops import MetaOpCache
from lorasmith.memory.tracking import CUDA_BLOCK_BYTES, LiveBytes, allocator_bytes


def test_allocator_rounds_blocks_up_to_512_bytes():
    assert allocator_bytes(0) == 0
    assert allocator_bytes(1) == CUDA_BLOCK_BYTES == 512
    assert allocator_bytes(513) == 1024


def test_live_bytes_follow_allocations_and_frees():
    with LiveBytes(block=1) as live:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2
        assert live.live == 8000
        del b
        assert live.live == 4000
        view = a.view(10, 100)[:5]  # a view shares the storage: nothing new
        a.add_(1)  # in place: nothing new
        assert live.live == 4000
        del a, view
        assert live.live == 0
    assert live.peak == 8000


def test_weights_made_before_the_mode_are_not_counted():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    x = torch.ones(1, 4, 16, 16)
    with LiveBytes(block=1) as live, torch.no_grad():
        y = F.silu(conv(x))
    assert live.live == y.numel() * 4  # no graph: the conv's output was freed once silu had used it
    assert live.peak == 2 * y.numel() * 4


def test_meta_tensors_are_counted_like_real_ones():
    peaks = []
    for device in ("cpu", "meta"):
        w = torch.empty(64, 32, device=device).requires_grad_()
        with LiveBytes() as live:
            x = torch.empty(8, 64, device=device)
            (x @ w).sin().sum().backward()
        peaks.append(live.peak)
    assert peaks[0] == peaks[1] > 0


def test_the_meta_op_cache_changes_nothing_but_speed():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.LayerNorm(64)).to("meta")
    layer.requires_grad_(True)
    results = []
    cache = MetaOpCache()
    for run in (None, cache, cache):  # plain, filling the cache, from the cache
        with LiveBytes(run=run) as live:
            out = layer(torch.empty(16, 32, device="meta"))
            out.sum().backward()
        results.append((live.peak, out.shape, out.stride(), out.dtype))
        layer.zero_grad(set_to_none=True)
    assert results[0] == results[1] == results[2]
    assert cache._outputs  # it did remember


def test_a_garbage_collection_inside_the_books_frees_without_deadlock():
    """A finalizer runs as soon as a collection frees a storage, which may be while this thread is booking
    another one: the books' lock must let the same thread in again."""
    import gc
    import threading

    from lorasmith.memory.scaling import SizeClasses

    class CollectingClasses(SizeClasses):
        def column(self, powers):  # as if a collection started here, inside the booking
            gc.collect()
            return super().column(powers)

    def work(done: list) -> None:
        with LiveBytes(block=1, classes=CollectingClasses((23, 29, 31))) as live:
            cycle = [torch.ones(100)]
            cycle.append(cycle)  # only the collector frees it
            del cycle
            kept = torch.ones(10)  # booked while the collection frees the cycle's 400 bytes
            done.append(live.live)
            del kept

    done: list = []
    worker = threading.Thread(target=work, args=(done,), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "booking deadlocked on its own lock"
    assert done == [40]
