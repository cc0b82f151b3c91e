"""The sources of data: ``load_data(ref)`` reads the ``--data KIND:PATH`` reference of fit and pack
into a FactorDataset, ``prepare_data`` splits it, and ``traits`` says what the rest of factordiff
needs to know of a source (channel names, bit depth, the perturbation and its control, SMILES, how
to render fresh images) as data, so that nothing outside ``data/`` asks which source a run came from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from factordiff.config import RunConfig
from factordiff.data.base import FactorDataset
from factordiff.data.cellsim import CHANNELS, COMPOUNDS, CONTROL, cellsim
from factordiff.data.crops import CropStack, Intensity, crops_dataset, fit_intensity, model_size, read_crops
from factordiff.data.fieldcrops import CACHE, FIELDS, POSITIONS, fields_stack, stack_channels
from factordiff.data.shapes import read_h5, replica, resize_images
from factordiff.data.shards import open_shards
from factordiff.data.splits import Split, make_split, select
from factordiff.data.table import read_table
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec, continuous, parse_pairs

PROFILES = "profiles:"


def is_profile_source(source: str) -> bool:
    """Whether ``--data`` names a profile table (``profiles:TABLE``) rather than images."""
    return source.startswith(PROFILES)


@dataclass(frozen=True)
class Traits:
    """What commands and figures need to know of a run's data, whatever its source.

    Args:
        channels: channel names (empty: ``gray``, ``R, G, B`` or ``ch1, ch2, ...`` by count).
        tiff_scale: the images are 16-bit fields kept at 8 bits, ``value * tiff_scale + tiff_scale / 2``
            restores the scale; regenerated images are then written as one 16-bit TIFF per channel
            (None: one PNG per image).
        perturbation: the factor naming the perturbation (e.g. compound), None if there is none.
        control: its negative-control value (e.g. DMSO).
        smiles: SMILES of perturbation values, including compounds no image shows.
        render: ``render(size, n, seed)``: fresh images of every combination (built-in data), which
            the evaluation oracle learns from; None: the oracle learns from the dataset itself.
    """

    channels: tuple[str, ...] = ()
    tiff_scale: int | None = None
    perturbation: str | None = None
    control: str | None = None
    smiles: Mapping[str, str] = field(default_factory=dict)
    render: Callable[[int, int, int], FactorDataset] | None = None

    def channel_names(self, count: int) -> tuple[str, ...]:
        if len(self.channels) == count:
            return self.channels
        return {1: ("gray",), 3: ("R", "G", "B")}.get(count, tuple(f"ch{c + 1}" for c in range(count)))


def traits(cfg: RunConfig) -> Traits:
    """The traits of ``cfg``'s data: the built-in sources' own; for files, the perturbation and its
    control from ``profiles.controls`` (``--controls F=V``) where set."""
    source = cfg.data.source
    if source == "cellsim":
        shown = tuple(c for c in cfg.data.channels or CHANNELS if c not in cfg.denoiser.control)
        return Traits(
            shown,
            64,
            "compound",
            CONTROL,
            COMPOUNDS,
            lambda size, n, seed: cellsim(size, n, seed, channels=None if shown == CHANNELS else shown),
        )
    if source == "shapes":
        return Traits(render=lambda size, n, seed: replica(size, n=n, seed=seed))
    channels = tuple(_channel_names(cfg.data.channels) or ())
    if cfg.profiles.controls:
        name, value = parse_pairs(cfg.profiles.controls, "profiles.controls")[0]
        return Traits(channels, perturbation=name, control=value)
    return Traits(channels)


def load_data(
    ref: str,
    size: int | None = None,
    factors: list[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    channels: list[str] | None = None,
) -> FactorDataset:
    """Load a dataset from a reference string.

    ``size`` is the image size to return (None: 32 for the replica, the files' own size otherwise).
    ``shapes`` renders the built-in 3D Shapes replica (``n`` images, all combinations when None);
    ``cellsim`` the built-in 5-channel Cell Painting assay (``n`` fields, 12,000 when None, 64x64;
    ``channels`` picks and orders its channels by name, ``BF`` its brightfield);
    ``h5:FILE`` reads DeepMind's ``3dshapes.h5``; ``table:FILE.csv`` reads a folder of images with a
    factor table (``factors`` names the factor columns); ``shards:DIR`` opens a dataset written by
    ``factordiff data pack``, whose images stay on disk until a batch reads them; ``crops:STACK.npz``
    a crop stack (``data/crops.py``; a fit reads it with ``prepare_crops``, which scales each plate by
    its training crops only).
    """
    kind, _, arg = ref.partition(":")
    if kind == "shapes" and not arg:
        return replica(size=size or 32, n=n, seed=seed)
    if kind == "cellsim" and not arg:
        return cellsim(size=size or 64, n=n, seed=seed, channels=channels)
    if kind == "h5" and arg:
        return read_h5(Path(arg), size=size, n=n, seed=seed)
    if kind == "table" and arg:
        data = read_table(Path(arg), factors=factors)
        if size is not None and data.size != size:
            if data.size % size:
                raise FactordiffError(
                    f"{arg}: images are {data.size}x{data.size}; expected a multiple of the model "
                    f"size {size} (set --size)"
                )
            data.images = resize_images(data.images, size)
        return data
    if kind == "crops" and arg:  # no split here: the intensity scale is fitted on every crop
        stack = read_crops(arg, factors=factors)
        every = np.ones(len(stack.images), bool)
        return crops_dataset(
            stack, fit_intensity(stack, every, seed), model_size(stack.images.shape[1], size)
        )
    if kind == "fields" and arg:
        raise FactordiffError(
            f"--data {ref}: fields are cut into crops inside a run; use factordiff fit --data {ref}"
        )
    if kind == "shards" and arg:
        data = open_shards(Path(arg))
        if size is not None and data.size != size:
            raise FactordiffError(
                f"{arg}: packed images are {data.size}x{data.size}, not {size}; pack them at --size {size}"
            )
        return data
    raise FactordiffError(
        "--data: expected 'shapes', 'cellsim', 'h5:FILE', 'table:FILE.csv', 'shards:DIR', "
        f"'crops:STACK.npz', 'fields:SOURCE' or 'profiles:TABLE', got {ref!r}"
    )


CROPS = "crops:"
FIELDS_SIZE = 48  # the default model size of a fields: run (crops of 96 pixels halved)


def is_crop_source(source: str) -> bool:
    """Whether ``--data`` names crops (a stack, or fields cut into crops in the run)."""
    return source.startswith((CROPS, FIELDS))


@dataclass
class Crops:
    """A crop-stack run's data as its fit prepared it (``prepare_crops``)."""

    stack: CropStack
    split: Split
    train: np.ndarray  # bool mask of training crops
    intensity: Intensity
    data: FactorDataset  # every crop, uint8 at the model size


def prepare_crops(cfg: RunConfig, run: Path | None = None, progress: bool = True) -> Crops:
    """Read ``crops:STACK.npz`` (or the crops of ``fields:SOURCE``, cut into ``run`` on first use),
    split it and fit the per-plate intensity scale on training crops. For fields, if anything fails
    before a fit has written its config to ``run``, the crops cut for it are removed again (and the
    folder, if that leaves it empty), so bad input leaves nothing behind."""
    if not cfg.data.source.startswith(FIELDS):
        return _split_crops(cfg, cfg.data.source[len(CROPS) :], cfg.data.index, cfg.data.channels)
    if run is None:
        raise FactordiffError(f"--data {cfg.data.source}: fields are cut into crops inside a run folder")
    run = Path(run)
    fresh = not (run / "run_config.json").exists()
    try:
        path = fields_stack(cfg.data, run, progress)
        return _split_crops(cfg, str(path), None, list(stack_channels(run)), POSITIONS)
    except BaseException:
        if fresh:
            import shutil

            shutil.rmtree(run / CACHE, ignore_errors=True)
            if run.is_dir() and not any(run.iterdir()):
                run.rmdir()
        raise


def _channel_names(channels: list[str] | None) -> list[str] | None:
    """Channel names of ``--channels`` (``DNA=5`` -> ``DNA``)."""
    return [c.partition("=")[0].strip() for c in channels] if channels else None


def _split_crops(
    cfg: RunConfig, path: str, index: str | None, channels: list[str] | None, positions: tuple[str, ...] = ()
) -> Crops:
    roles = dict(parse_pairs(p, "profiles.roles")[0] for p in cfg.profiles.roles)
    stack = read_crops(path, index, channels, cfg.data.factors, roles, positions)
    spec, factors = continuous(stack.spec, stack.factors, cfg.data.continuous)
    stack = replace(stack, spec=spec, factors=factors)
    split = make_split(stack.spec, cfg.split)
    for text in cfg.split.where:
        if not select(stack.spec, stack.factors, [text], stack.metadata, "--holdout-where").any():
            raise FactordiffError(f"--holdout-where {text!r}: no crop of {stack.source} matches")
    train = ~split.heldout(stack.factors)
    if not train.any():
        raise FactordiffError(f"split {split.description}: holds out every crop; nothing left to train on")
    controls = (
        select(stack.spec, stack.factors, [cfg.profiles.controls], stack.metadata, "--controls")
        if cfg.profiles.controls
        else None
    )
    intensity = fit_intensity(stack, train, cfg.train.seed, controls)
    size = cfg.data.size or (FIELDS_SIZE if cfg.data.source.startswith(FIELDS) else None)
    size = model_size(stack.images.shape[1], size)
    check_size(size, stack.source)
    data = crops_dataset(stack, intensity, size)
    return Crops(stack, split, train, intensity, data)


def prepare_data(
    cfg: RunConfig, run: Path | None = None, progress: bool = True
) -> tuple[FactorDataset, Split, FactorDataset]:
    """Load the data and remove the held-out combinations: (all data, split, training data).
    ``run``: the run folder, where a ``fields:`` source's crops are kept."""
    if is_crop_source(cfg.data.source):
        crops = prepare_crops(cfg, run, progress)
        data, split = crops.data, crops.split
        return data, split, data.subset(crops.train)
    data = load_data(
        cfg.data.source,
        size=cfg.data.size,
        factors=cfg.data.factors,
        n=cfg.data.n,
        seed=cfg.train.seed,
        channels=cfg.data.channels if cfg.data.source == "cellsim" else None,
    )
    check_size(data.size, data.source)
    data = take_control(data, cfg)
    spec, factors = continuous(data.spec, data.factors, cfg.data.continuous)
    data = replace(data, spec=spec, factors=factors)
    split = make_split(data.spec, cfg.split)
    train = data.subset(~split.heldout(data.factors))
    if len(train) == 0:
        raise FactordiffError(f"split {split.description}: holds out every image; nothing left to train on")
    return data, split, train


def take_control(data: FactorDataset, cfg: RunConfig) -> FactorDataset:
    """``data`` with the channels ``denoiser.control`` names moved from ``images`` to ``control``
    (a controlled run's conditioning images); unchanged when it names none."""
    wanted = cfg.denoiser.control
    if not wanted:
        return data
    if not isinstance(data.images, np.ndarray):
        raise FactordiffError(
            f"denoiser.control: {data.source}: packed images cannot be split; use the table"
        )
    names = list(cfg.data.channels or (CHANNELS if cfg.data.source == "cellsim" else ()))
    names = names if len(names) == data.channels else list(Traits().channel_names(data.channels))
    missing = [c for c in wanted if c not in names]
    if missing or len(wanted) >= len(names):
        raise FactordiffError(
            f"denoiser.control: {', '.join(missing) or 'every channel'}: expected some, not all, of the "
            f"data's channels {', '.join(names)} (name them with data.channels)"
        )
    keep = [i for i, c in enumerate(names) if c not in wanted]
    control = np.ascontiguousarray(data.images[..., [names.index(c) for c in wanted]])
    return FactorDataset(
        np.ascontiguousarray(data.images[..., keep]), data.factors, data.spec, data.source, control
    )


def check_size(size: int, source: str) -> None:
    """The models halve an image up to four times (autoencoder and UNet): a multiple of 16."""
    if size < 16 or size % 16:
        raise FactordiffError(
            f"{source}: images are {size}x{size}; the models need a multiple of 16 (16, 32, 48, 64...; "
            "set --size)"
        )


def read_images_like(path: Path, spec: FactorSpec, size: int) -> FactorDataset:
    """New images for a trained run (``regenerate --table``): an image table (``table:`` layout)
    with the run's factor columns, whose values must be values the run knows, at the run's size."""
    data = read_table(Path(path), factors=spec.names)
    factors = np.zeros_like(data.factors)
    for k, f in enumerate(data.spec.factors):
        run_factor = spec.factors[k]
        for v, value in enumerate(f.values):
            try:
                factors[data.factors[:, k] == v, k] = run_factor.index(value)
            except FactordiffError as e:
                raise FactordiffError(f"{path}: column {f.name}: {e}") from None
    images = data.images
    if data.size != size:
        if data.size % size:
            raise FactordiffError(
                f"{path}: images are {data.size}x{data.size}; expected a multiple of {size}"
            )
        images = resize_images(images, size)
    return FactorDataset(images, factors, spec, str(path))
