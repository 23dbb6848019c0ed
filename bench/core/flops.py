"""The FLOP model of one training step: the GEMMs an MLP's forward and backward passes run, at the
model's own shapes. An epoch's training FLOPs are exactly: forward 2·N·Σ in·out, the weight gradients
the same again, and the input gradients of every layer but the first. Timing those shapes
(framebench.driver.probe) gives the epoch's GEMM floor (framebench.reports.floors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gemm:
    kind: str  # "forward", "weight_grad" or "input_grad"
    layer: int  # 1-based layer number
    m: int  # rows of the left operand
    k: int  # shared dimension
    n: int  # columns of the right operand

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def step_gemms(sizes: tuple[int, ...], batch: int) -> list[Gemm]:
    """The GEMMs of one training step of `batch` samples (no input gradient for the first layer)."""
    gemms = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False), start=1):
        gemms.append(Gemm("forward", layer, batch, fan_in, fan_out))
        gemms.append(Gemm("weight_grad", layer, fan_in, batch, fan_out))
        if layer > 1:
            gemms.append(Gemm("input_grad", layer, batch, fan_out, fan_in))
    return gemms


def key(gemm: Gemm) -> str:
    return f"{gemm.m}x{gemm.k}x{gemm.n}"
