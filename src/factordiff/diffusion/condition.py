"""The typed condition a denoiser receives: one code block per factor and which factors are present."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Condition:
    """Codes of a batch, ``codes`` (B, K, D), and ``present`` (B, K) bool.

    A factor that is not present is represented by its learned null embedding ("factor absent"),
    never by an in-range code value such as 0.
    """

    codes: torch.Tensor
    present: torch.Tensor

    @classmethod
    def full(cls, codes: torch.Tensor) -> "Condition":
        return cls(codes, torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device))

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

    def __len__(self) -> int:
        return self.codes.shape[0]

    def without(self, factor: int) -> "Condition":
        """The same condition with ``factor`` absent."""
        present = self.present.clone()
        present[:, factor] = False
        return Condition(self.codes, present)

    def absent(self) -> "Condition":
        """Every factor absent (the unconditional model)."""
        return Condition(self.codes, torch.zeros_like(self.present))

    def with_block(self, factor: int, block: torch.Tensor) -> "Condition":
        """Replace the code block of ``factor`` by ``block`` ((D,) or (B, D))."""
        codes = self.codes.clone()
        codes[:, factor] = block
        return Condition(codes, self.present)

    def cat(self, other: "Condition") -> "Condition":
        return Condition(torch.cat([self.codes, other.codes]), torch.cat([self.present, other.present]))

    def index(self, i) -> "Condition":
        return Condition(self.codes[i], self.present[i])

    def to(self, device: torch.device | str) -> "Condition":
        return Condition(self.codes.to(device), self.present.to(device))


def check_condition(conditioned: bool, cond: Condition | None, batch: int) -> None:
    """Raise naming what a denoiser expected: a Condition of ``batch`` rows iff it is ``conditioned``."""
    if conditioned and cond is None:
        raise ValueError("this denoiser is conditioned: pass a Condition (codes and present mask)")
    if not conditioned and cond is not None:
        raise ValueError("this denoiser is unconditional: it takes no Condition")
    if cond is not None and len(cond) != batch:
        raise ValueError(f"Condition has {len(cond)} rows for a batch of {batch}")
