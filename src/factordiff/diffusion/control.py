"""Image-to-image control: a ControlNet branch (Zhang, Rao & Agrawala 2023, "Adding conditional
control to text-to-image diffusion models") for the denoiser's diffusers ``UNet2DModel``.

``ControlBranch`` is a trainable copy of the base UNet's encoder (input convolution, time embedding,
down blocks and mid block, with the base's weights). It reads x_t plus the conditioning image
(e.g. the brightfield channel), which enters through a small convolutional embedding whose last
convolution starts at zero (the paper's Eq. 2-3 hint encoder); its skip features and mid-block
output go through zero-initialised 1x1 convolutions ("zero convolutions") and are added to the base
UNet's skip connections and mid-block output. At initialisation every added term is zero, so the
controlled model is the base model exactly.

``Controlled`` wraps the one denoiser interface: ``controlled(x, t, cond)`` with ``cond.control``
set (B, C_control, H, W) in [-1, 1] at the image's resolution. The base's codes enter as before
(the branch also receives the same code embedding as the base's time embedding, as the paper's
copy receives the text condition), so classifier-free guidance per factor works unchanged: the
control image stays in every guidance term.
"""

from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy

import torch
from torch import nn

from factordiff.diffusion.condition import Condition


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def hint_encoder(control_channels: int, out_channels: int, downsample: int, width: int = 32) -> nn.Sequential:
    """Conditioning image (B, C, H, W) -> (B, out_channels, H / downsample, W / downsample): 3x3
    convolutions with SiLU, one stride-2 convolution per halving (latent runs), the last one zero."""
    layers: list[nn.Module] = [nn.Conv2d(control_channels, width, 3, padding=1), nn.SiLU()]
    size = downsample
    while size > 1:
        layers += [nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU()]
        size //= 2
    layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class ControlBranch(nn.Module):
    """The trainable copy of ``unet``'s encoder with its hint encoder and zero convolutions.

    Args:
        unet: the base ``UNet2DModel`` (its weights are copied; the base itself is not changed).
        control_channels: channels of the conditioning image.
        downsample: image size over the denoiser's input size (1 in pixel space, the autoencoder's
            factor in latent space), a power of two.
    """

    def __init__(self, unet, control_channels: int, downsample: int = 1):
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"ControlBranch: downsample must be a power of two, got {downsample}")
        self.control_channels = control_channels
        for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
            setattr(self, name, deepcopy(getattr(unet, name)))
        self.hint = hint_encoder(control_channels, unet.config.block_out_channels[0], downsample)
        channels = [r.shape[1] for r in self._encode_shapes(unet)]
        self.zero_convs = nn.ModuleList(_zero_conv(c) for c in channels)
        self.zero_mid = _zero_conv(unet.config.block_out_channels[-1])

    @torch.no_grad()
    def _encode_shapes(self, unet) -> list[torch.Tensor]:
        size = unet.config.sample_size
        x = torch.zeros(1, unet.config.in_channels, size, size)
        skips, _ = self._encode(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, self.emb_dim), None)
        return skips

    @property
    def emb_dim(self) -> int:
        return self.time_embedding.linear_2.out_features

    def _encode(self, x, t, class_emb, control):
        emb = self.time_embedding(self.time_proj(t).to(x.dtype)) + self.class_embedding(class_emb)
        h = self.conv_in(x)
        if control is not None:
            h = h + self.hint(control)
        skips = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb)
            skips += list(res)
        return skips, self.mid_block(h, emb)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, class_emb: torch.Tensor, control: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals for the base's skip connections (in the base's order) and mid block."""
        skips, mid = self._encode(x, t, class_emb, control)
        return [z(s) for z, s in zip(self.zero_convs, skips)], self.zero_mid(mid)


class _SkipHook:
    """Forward pre-hook of an up block: adds the branch's residuals to the skip features it reads
    (``stop - len(resnets)`` to ``stop`` of the base's skip list). An object, so a deep copy of the
    controlled denoiser hooks the copy."""

    def __init__(self, owner: "Controlled", stop: int):
        self.owner, self.stop = owner, stop

    def __call__(self, module, args):
        res = self.owner._residuals
        if res is None:
            return None
        skips = res[0][self.stop - len(module.resnets) : self.stop]
        return (args[0], tuple(a + r for a, r in zip(args[1], skips)), *args[2:])


class _MidHook:
    def __init__(self, owner: "Controlled"):
        self.owner = owner

    def __call__(self, module, args, output):
        res = self.owner._residuals
        return output if res is None else output + res[1]


class Controlled(nn.Module):
    """A denoiser (``diffusion/denoiser.Denoiser``) with a ``ControlBranch``: the one interface,
    ``forward(x, t, cond)``, with ``cond.control`` required."""

    def __init__(self, base: nn.Module, branch: ControlBranch):
        super().__init__()
        self.base, self.branch = base, branch
        self._residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None
        unet = base.unet
        stop = len(branch.zero_convs)
        for block in unet.up_blocks:
            block.register_forward_pre_hook(_SkipHook(self, stop))
            stop -= len(block.resnets)
        unet.mid_block.register_forward_hook(_MidHook(self))

    @property
    def unet(self):
        return self.base.unet

    @property
    def adapter(self):
        return self.base.adapter

    @property
    def head(self):
        return getattr(self.base, "head", None)

    @contextmanager
    def _active(self, residuals):
        self._residuals = residuals
        try:
            yield
        finally:
            self._residuals = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        if cond is None or cond.control is None:
            raise ValueError(
                f"this denoiser is controlled: pass a Condition with control images "
                f"(batch, {self.branch.control_channels}, H, W)"
            )
        if cond.control.shape[:2] != (len(x), self.branch.control_channels):
            raise ValueError(
                f"Condition.control: expected ({len(x)}, {self.branch.control_channels}, H, W), got "
                f"{tuple(cond.control.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(len(x))
        class_emb = self.base.condition_embedding(x, cond)
        with self._active(self.branch(x, t, class_emb, cond.control.to(x.dtype))):
            return self.base(x, t, cond)
