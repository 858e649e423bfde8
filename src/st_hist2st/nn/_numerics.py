from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (the product of two tiny floats says)."""
    return bool((torch.tensor(1e-30, dtype=torch.float32) * 1e-10).item() == 0.0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Flush denormal floats to zero on the calling thread for the block, then restore the caller's setting.

    With the paper's raw 0-255 pixel values the encoder's GELU and BatchNorm can meet denormal intermediates,
    which some x86 CPUs process many times slower; only values below about 1e-38 change. Threads inherit the
    setting when they are created, so torch's worker threads are started first: they keep the caller's
    setting, and nothing of the block outlives it. Yields whether the CPU supports the setting.
    """
    before = denormals_flushed()
    torch.ones(1 << 20).add_(1)  # an op large enough to run in parallel starts torch's worker threads
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)
