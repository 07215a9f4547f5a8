"""The GPU check's correctness part: DeconvNet's max pooling and unpooling under bf16 and
channels_last give what fp32 contiguous gives, on the model's own activations.

The decoder puts each pooled value back where the encoder's pool found it (``MaxUnpool2d`` with
the pool's indices). A kernel that read a channels_last tensor's indices in the wrong layout
would scatter values to the wrong pixels and train on silently; this compares both settings on
the real inputs of each of the encoder's five pools (``harness bench --only gpu``).

What counts as the same: pooled and unpooled values within bf16's rounding of fp32
(``RTOL``), and the same indices, except in a window whose top values round to the same bf16
number (a tie: either index holds the maximum, and the unpooled values there are left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

# bf16 keeps 8 significant bits: rounding to nearest errs by at most half a unit in the last
# place, 2^-8 of the value; the pools only pick and move values (no arithmetic), so 2^-7 leaves
# a factor 2 for that rounding and nothing for a value put in the wrong place
RTOL = 2.0**-7


class UnpoolOutputs(NamedTuple):
    pooled: Tensor
    indices: Tensor
    unpooled: Tensor


@dataclass(frozen=True)
class PoolResult:
    """One of the encoder's pools: the tested setting's outputs against fp32 contiguous."""

    shape: tuple[int, ...]  # the pool's input, N x C x H x W
    mismatched_indices: int  # indices that differ where the values do not tie
    tied_indices: int  # indices that differ at a tie after rounding (either holds the max)
    pooled_rel_diff: float  # largest |test - fp32| / |fp32| of the pooled values
    unpooled_rel_diff: float  # the same over the unpooled map, tied windows left out
    rtol: float

    @property
    def passed(self) -> bool:
        return (
            self.mismatched_indices == 0
            and self.pooled_rel_diff <= self.rtol
            and self.unpooled_rel_diff <= self.rtol
        )


@dataclass(frozen=True)
class UnpoolReport:
    setting: str  # what was compared with fp32 contiguous
    pools: tuple[PoolResult, ...]

    @property
    def passed(self) -> bool:
        return bool(self.pools) and all(p.passed for p in self.pools)


def unpool_outputs(
    pool: nn.Module, unpool: nn.Module, x: Tensor, dtype: torch.dtype, channels_last: bool
) -> UnpoolOutputs:
    """Pool ``x`` in ``dtype`` and memory format, then unpool with the pool's own indices (as
    the decoder does, ``output_size`` restoring odd sizes)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(dtype).contiguous(memory_format=memory_format)
    pooled, indices = pool(x)
    return UnpoolOutputs(pooled, indices, unpool(pooled, indices, output_size=x.shape[-2:]))


def _rel_diff(test: Tensor, ref: Tensor) -> float:
    """Largest |test - ref| / |ref|; where ref is 0, any non-zero test counts as huge."""
    if test.numel() == 0:
        return 0.0
    tiny = torch.finfo(torch.float32).tiny
    rel = (test.float() - ref.float()).abs() / ref.float().abs().clamp_min(tiny)
    return float(rel.max())


def compare_unpool(
    x: Tensor, ref: UnpoolOutputs, test: UnpoolOutputs, dtype: torch.dtype, rtol: float = RTOL
) -> PoolResult:
    """``test`` (computed on ``x`` in ``dtype``) against ``ref`` (fp32 contiguous on ``x``)."""
    rounded = x.to(dtype).float().flatten(2)  # the values the tested side saw, per plane
    ref_idx, test_idx = ref.indices.flatten(2), test.indices.flatten(2)
    differ = ref_idx != test_idx
    tie = differ & (rounded.gather(2, ref_idx) == rounded.gather(2, test_idx))
    # in a tied window each side put the max at its own index: leave both places out
    ref_unpooled = ref.unpooled.flatten(2)
    skip = torch.zeros_like(ref_unpooled, dtype=torch.bool).scatter_(2, ref_idx, tie)
    skip |= torch.zeros_like(skip).scatter_(2, test_idx, tie)
    keep = ~skip
    return PoolResult(
        shape=tuple(x.shape),
        mismatched_indices=int((differ & ~tie).sum()),
        tied_indices=int(tie.sum()),
        pooled_rel_diff=_rel_diff(test.pooled, ref.pooled),
        unpooled_rel_diff=_rel_diff(test.unpooled.flatten(2)[keep], ref_unpooled[keep]),
        rtol=rtol,
    )


def pool_inputs(encoder: nn.Module, images: Tensor) -> list[Tensor]:
    """What each max pool of ``encoder`` receives on ``images`` (fp32, no gradients)."""
    seen: list[Tensor] = []
    pools = [m for m in encoder.modules() if isinstance(m, nn.MaxPool2d)]
    hooks = [p.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for p in pools]
    try:
        with torch.no_grad():
            encoder(images.float().contiguous())
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def check_unpool(model: nn.Module, images: Tensor, dtype: torch.dtype) -> UnpoolReport:
    """DeconvNet ``model``'s pools and unpooling on the real inputs of its five pools: ``dtype``
    + channels_last against fp32 contiguous. ``model`` should be fp32 (its activations are the
    reference). Pool and unpool are no autocast ops: in training they run in their input's
    dtype, which is what they get here."""
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    unpool: nn.Module = model.decoder.unpool  # type: ignore[union-attr,assignment]
    pools = [m for m in encoder.modules() if isinstance(m, nn.MaxPool2d)]
    model.eval()
    results = []
    with torch.no_grad():
        for pool, x in zip(pools, pool_inputs(encoder, images), strict=True):
            ref = unpool_outputs(pool, unpool, x, torch.float32, channels_last=False)
            test = unpool_outputs(pool, unpool, x, dtype, channels_last=True)
            results.append(compare_unpool(x, ref, test, dtype))
    return UnpoolReport(setting=f"{dtype_name(dtype)}+channels_last", pools=tuple(results))


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16, fp32: the short names the reports use."""
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    return names.get(dtype, str(dtype).removeprefix("torch."))
