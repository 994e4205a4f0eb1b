"""The embedding dtype's resolution: when the cast back rounds the noise away."""

from __future__ import annotations

import math

import torch


def precision_warning(
    eps: float,
    dtype: torch.dtype,
    signal_rms: float,
    noise_rms: float,
    autocast: bool = False,
) -> str:
    """The warning for noise below the spacing of ``dtype`` at the embedding's RMS, or "".

    Args:
        eps: the configured noise scale.
        dtype: the embedding output's dtype (half precision warns, float32/64 never), or,
            with ``autocast``, the dtype autocast computes the following layers in.
        signal_rms: RMS of the clean embedding output.
        noise_rms: RMS of the noise that survived the cast back.
        autocast: the embedding output is float32 but ``torch.autocast`` runs the layers
            after it in ``dtype``: the first of them rounds the noise away.

    Example:
        >>> bool(precision_warning(1e-5, torch.bfloat16, 0.02, 0.0))
        True
    """
    if not dtype.is_floating_point or torch.finfo(dtype).bits >= 32:
        return ""
    spacing = resolution_at(signal_rms, dtype)
    if eps >= spacing:
        return ""
    if autocast:
        return (
            f"eps={eps:g} is below the resolution of {dtype} at the embedding's RMS "
            f"({signal_rms:.3g}: spacing {spacing:.3g}); the embedding output stays float32, "
            f"but under torch.autocast({dtype}) the layers after it compute in {dtype}, so "
            f"the first of them rounds the perturbation to {dtype}'s grid: most elements "
            f"lose it and the rest jump by a whole spacing, which is rounding, not the "
            f"configured noise (with dropout on, the term is then mostly dropout's). Raise "
            f"eps to at least {spacing:.2g}, or train this model without autocast."
        )
    return (
        f"eps={eps:g} is below the resolution of {dtype} at the embedding's RMS "
        f"({signal_rms:.3g}: spacing {spacing:.3g}); the cast back to {dtype} rounds "
        f"the noise of many elements (typically half or more) to zero and the rest to "
        f"multiples of the spacing (noise RMS after the cast: {noise_rms:.3g}). Raise eps "
        f"to at least {spacing:.2g}, or keep the model in float32 (autocast: see its own "
        f"warning); "
        f"last_stats['noise_to_signal'] shows what survives."
    )


def resolution_at(value: float, dtype: torch.dtype) -> float:
    """The spacing between neighbouring ``dtype`` numbers around ``|value|`` (its ulp).

    Example:
        >>> resolution_at(0.02, torch.bfloat16)  # 2**-6 · 2**-7
        0.0001220703125
    """
    info = torch.finfo(dtype)
    exponent = max(math.floor(math.log2(max(abs(value), info.tiny))), math.log2(info.tiny))
    return float(2.0**exponent * info.eps)
