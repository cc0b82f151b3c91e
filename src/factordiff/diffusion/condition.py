"""The typed condition a denoiser receives: one code block per factor and which factors are present."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Condition:
    """Codes of a batch, ``codes`` (B, K, D), ``present`` (B, K) bool, and for a controlled
    denoiser (``diffusion/control.py``) its conditioning images ``control`` (B, C, H, W) in [-1, 1].

    A factor that is not present is represented by its learned null embedding ("factor absent"),
    never by an in-range code value such as 0. Every derived condition keeps ``control``.
    """

    codes: torch.Tensor
    present: torch.Tensor
    control: torch.Tensor | None = None

    @classmethod
    def full(cls, codes: torch.Tensor, control: torch.Tensor | None = None) -> "Condition":
        return cls(codes, torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device), control)

    def __post_init__(self) -> None:
        if self.codes.ndim != 3:
            raise ValueError(
                f"Condition.codes: expected (batch, factors, code_dims), got shape {tuple(self.codes.shape)}"
            )
        if self.present.shape != self.codes.shape[:2] or self.present.dtype != torch.bool:
            raise ValueError(
                f"Condition.present: expected bool of shape {tuple(self.codes.shape[:2])}, got "
                f"{self.present.dtype} {tuple(self.present.shape)}"
            )
        if self.control is not None and (self.control.ndim != 4 or len(self.control) != len(self.codes)):
            raise ValueError(
                f"Condition.control: expected ({len(self.codes)}, channels, H, W), got "
                f"{tuple(self.control.shape)}"
            )

    def __len__(self) -> int:
        return self.codes.shape[0]

    def without(self, factor: int) -> "Condition":
        """The same condition with ``factor`` absent."""
        present = self.present.clone()
        present[:, factor] = False
        return Condition(self.codes, present, self.control)

    def absent(self) -> "Condition":
        """Every factor absent (the unconditional model)."""
        return Condition(self.codes, torch.zeros_like(self.present), self.control)

    def with_block(self, factor: int, block: torch.Tensor) -> "Condition":
        """Replace the code block of ``factor`` by ``block`` ((D,) or (B, D))."""
        codes = self.codes.clone()
        codes[:, factor] = block
        return Condition(codes, self.present, self.control)

    def cat(self, other: "Condition") -> "Condition":
        if (self.control is None) != (other.control is None):
            raise ValueError("Condition.cat: one condition has control images and the other has none")
        control = None if self.control is None else torch.cat([self.control, other.control])
        return Condition(
            torch.cat([self.codes, other.codes]), torch.cat([self.present, other.present]), control
        )

    def index(self, i) -> "Condition":
        return Condition(self.codes[i], self.present[i], None if self.control is None else self.control[i])

    def to(self, device: torch.device | str) -> "Condition":
        control = None if self.control is None else self.control.to(device)
        return Condition(self.codes.to(device), self.present.to(device), control)


def check_condition(conditioned: bool, cond: Condition | None, batch: int) -> None:
    """Raise naming what a denoiser expected: a Condition of ``batch`` rows iff it is ``conditioned``."""
    if conditioned and cond is None:
        raise ValueError("this denoiser is conditioned: pass a Condition (codes and present mask)")
    if not conditioned and cond is not None:
        raise ValueError("this denoiser is unconditional: it takes no Condition")
    if cond is not None and len(cond) != batch:
        raise ValueError(f"Condition has {len(cond)} rows for a batch of {batch}")
