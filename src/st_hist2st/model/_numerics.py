from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Flush denormal floats to zero on this thread and on every thread it starts from now on.

    With the paper's raw 0-255 pixel values, the encoder's activations reach the hundreds, and GELU and
    BatchNorm on them pass through denormal intermediates that x86 CPUs handle up to ten times slower. Threads
    inherit the setting when they are created, so it must be on before torch starts its worker threads to
    reach them. Values below about 1e-38 become 0. Returns whether the CPU supports it.
    """
    return torch.set_flush_denormal(True)
