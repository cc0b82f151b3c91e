"""Typed experiment configuration: nested dataclasses, loaded strictly from JSON, YAML or TOML.

Unknown fields, wrong types and out-of-range values are refused with a message naming the field
(``train.lr: expected a number, got 'fast'``). The resolved config is saved as JSON in every run
folder and beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from factordiff.checkpoint import atomic_write_text
from factordiff.errors import FactordiffError

SplitKind = Literal["none", "random", "composition", "interpolation", "extrapolation", "unseen_value"]
SPLIT_KINDS: tuple[str, ...] = (
    "none",
    "random",
    "composition",
    "interpolation",
    "extrapolation",
    "unseen_value",
)


@dataclass(frozen=True)
class SplitConfig:
    """Parameters of a held-out split.

    Args:
        kind: one of SPLIT_KINDS.
        factors: factor names the split acts on (composition: two; interpolation, extrapolation and
            unseen_value: one). Empty: chosen from the seed among eligible factors.
        fraction: random: fraction of combinations held out; composition: fraction of each
            factor's values in the held-out block; extrapolation: fraction of values at the top.
        seed: seeds every random choice.
        where: conditions by value, each ``"F=V,G=W"``; rows matching every pair of one of them
            are held out as well (factor names may drop a ``Metadata_`` prefix).
    """

    kind: SplitKind = "none"
    factors: tuple[str, ...] = ()
    fraction: float = 0.25
    seed: int = 0
    where: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self), "factors": list(self.factors), "where": list(self.where)}


EMBEDDING_KINDS = ("onehot", "morgan", "table:PATH")


def check_embedding_kind(kind: str, where: str) -> str:
    """``kind`` if it names a perturbation embedding (``onehot``, ``morgan``, ``table:PATH``)."""
    if kind in ("onehot", "morgan") or (kind.startswith("table:") and len(kind) > 6):
        return kind
    raise FactordiffError(
        f"{where}: unknown perturbation embedding {kind!r}; expected one of {', '.join(EMBEDDING_KINDS)}"
    )


@dataclass
class DataConfig:
    """Args:
    source: ``shapes``, ``cellsim``, ``h5:FILE``, ``table:FILE.csv``, ``shards:DIR``,
        ``crops:STACK.npz`` or ``profiles:TABLE``.
    size: image height and width the models work at (None: 32 for the replica, else the files' size).
    n: number of images (shapes: rendered combinations; h5: sampled rows; None: all).
    factors: factor columns of a table (None: all non-image columns).
    continuous: the factors that are continuous (ordinal: ordered values with distances, whose
        codes extend to values no training row had); every other factor is categorical. None: as
        the data says (built-in data sets declare theirs; tables: numeric columns, profiles:
        numeric biological columns).
    channels: channel names of a crop stack (``crops:STACK.npz``), one per channel; of fields
        (``fields:SOURCE``): names, or ``NAME=NUMBER`` for Phenix and RxRx, as ``factordiff fields``.
    index: the index table of a crop stack (None: ``STACK.csv`` beside it).
    crop: fields: crop size in pixels around each nucleus (None: 96, unless ``tiles``).
    tiles: fields: cut each field into a ``tiles`` x ``tiles`` grid instead of crops around nuclei.
    illum: fields: folder of CellProfiler illumination functions ``<plate>_Illum<Ch>.npy``.
    join: fields: plate maps or compound tables, each ``TABLE:FIELD_COLUMN=TABLE_COLUMN[,...]``.
    plate: fields: the plate (barcode) of a Phenix folder (None: the folder's name).
    root: fields: the folder that relative image paths resolve against (None: the table's folder).
    """

    source: str = "shapes"
    size: int | None = None
    n: int | None = 60000
    factors: list[str] | None = None
    continuous: list[str] | None = None
    channels: list[str] | None = None
    index: str | None = None
    crop: int | None = None
    tiles: int | None = None
    illum: str | None = None
    join: list[str] | None = None
    plate: str | None = None
    root: str | None = None


@dataclass
class DistillConfig:
    """The supervised factor distiller (image -> one code block per factor).

    Args:
        code_dims: dimensions of each factor's code block.
        width: channels of the first convolution (doubled at each downsampling).
        steps: optimisation steps (upper bound; the time budget may stop earlier).
        budget: share of the run's minutes for this stage.
        batch_size, lr: Adam batch size and learning rate.
        adversary_weight: weight of the penalty on what a block predicts about the other factors.
        order_weight: weight of the loss keeping an ordinal factor's order on the block's first axis.
        ordinal_dims: dimensions an ordinal factor's block uses, the others held at zero; ``1``
            makes the block the value's position on its grid (one code dimension per factor, as
            MIG and DCI completeness read codes); ``None`` (default) leaves blocks free, which
            conditions the generator better in the one comparison made so far (docs/design.md).
    """

    code_dims: int = 4
    width: int = 16
    steps: int = 1500
    budget: float = 0.08
    batch_size: int = 128
    lr: float = 2e-3
    adversary_weight: float = 0.1
    order_weight: float = 1.0
    ordinal_dims: int | None = None


@dataclass
class AutoencoderConfig:
    """The latent autoencoder; ``enabled=False`` means pixel-space diffusion.

    Args:
        kind: ``conv`` (factordiff's compact residual autoencoder) or ``kl`` (diffusers AutoencoderKL).
        block_out_channels: channels per resolution level; the image is downsampled
            ``len(block_out_channels) - 1`` times.
        layers_per_block: residual blocks per level.
        latent_channels: channels of the latent.
        feature_weight: weight of the distiller-probability divergence that keeps factor information.
        latent_weight: weight of the latent regulariser (L2 for ``conv``, KL for ``kl``).
    """

    enabled: bool = True
    kind: Literal["conv", "kl"] = "conv"
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    latent_channels: int = 4
    steps: int = 6000
    budget: float = 0.3
    batch_size: int = 32
    lr: float = 1e-3
    feature_weight: float = 0.1
    latent_weight: float = 1e-4


@dataclass
class DenoiserConfig:
    """The diffusers UNet2DModel denoiser and its code adapter.

    Args:
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet blocks per level.
        attention: add self-attention at the lowest resolution.
        prediction_type: ``v_prediction`` or ``epsilon``.
        beta_schedule: diffusers beta schedule name (``squaredcos_cap_v2`` is the cosine schedule).
        adapter_hidden: hidden width of each factor's adapter MLP.
        cond_dropout: probability that each factor is replaced by its null embedding in training
            (and, separately, that all factors are).
        dropout_schedule: ``independent`` (the above alone) or ``with_singles``: in addition, with
            probability ``single_prob`` a training row keeps exactly one factor, drawn uniformly,
            and every other factor takes its null embedding (what ``composed`` guidance asks for).
        single_prob: the share of training rows with one factor alone under ``with_singles``.
        coind_weight: weight of CoInD's conditional-independence loss, the mean square of
            eps(c_i) + eps(c_j) - eps(c_ij) - eps(null) on one random factor pair per row, in the
            model's prediction space (0: off). CoInD used about 1; too large a weight makes the
            model ignore its conditions.
        coind_rows: rows of each batch the CoInD loss is computed on (None: all); each costs four
            extra rows of the denoiser's forward pass.
        adapter: how the codes enter the UNet (``diffusion/adapters.py``): ``embed`` (per-factor
            MLPs summed into the time embedding), ``tokens`` (one token per factor, read by
            cross-attention layers added after the mid block and each up block) or ``shift`` (a
            second UNet of ``branch_channels`` reads the codes and adds its prediction to the
            base's, PDAE's gradient estimator). Each is an exact no-op at initialisation.
        token_dim: width of each factor's token (``tokens``).
        branch_channels: UNet channels per level of the ``shift`` branch.
        sampler: the deterministic ODE solver of sampling and inversion (diffusers schedulers,
            "trailing" time steps): ``ddim`` (Song et al. 2021) or ``dpmsolver++`` (DPM-Solver++(2M),
            Lu et al. 2022, inverted by its own inverse scheduler). ``benchmarks/nfe.py`` measures
            both against the number of steps.
        inference_precision: ``fp32`` or ``bf16``: the denoiser's passes in sampling and inversion
            under bf16 autocast (the weights stay fp32). On the 2-core CPU (it has bf16
            instructions) the quickstart's edits took 54 s against 71 s, held-out rates within
            0.002 (``benchmarks/nfe.py --precision bf16``); not the default because a CPU without
            bf16 instructions runs it slower and fp32 is the reference the benchmarks report.
        train_base: train the UNet with the adapter (joint). False: a ``base`` stage first trains
            the UNet alone, unconditionally, on half of the denoiser's time budget (and up to
            ``steps``), then the UNet stays frozen while the adapter trains.
        structure: a perturbation factor (e.g. ``compound``) whose code block the denoiser sees as a
            linear function of each value's Morgan fingerprint (radius 2, 1024 bits), learned with
            the denoiser and weighted by the distiller's posterior over the training values
            (``encoders.perturbation.StructureCodes``); a compound no training image had is then
            coded by its fingerprint in the same space. The values are SMILES, or names of the
            built-in assay's compounds. None (the default): the distiller's block, as for any
            other factor, and an unseen compound's code regressed from the training compounds'
            prototypes. On the 20-minute cellsim benchmark ``compound`` did no better: unseen
            compound 0.54 against 0.56, held-out swaps keeping the compound on 0.80 against 0.85
            (README).
        structure_control: the value of ``structure`` that is the control (DMSO): its code is
            its own, not a function of a structure.
        head: factors a classification head on the UNet's mid- and up-block features learns to
            read, trained jointly with the denoiser (Joint Diffusion, ``diffusion/head.py``); it
            reads the UNet with every factor absent, at the diffusion step's noise level. Empty:
            no head. Not with the ``shift`` adapter or the unsupervised encoder.
        head_weight: weight of the head's cross-entropy in the denoiser's loss.
        head_batch: labelled images the head reads each step, drawn from the labelled share apart
            from the diffusion batch (``diffusion/objective.py``).
        head_max_t: the share of the noise schedule the head's training t is drawn from (uniform
            on [0, head_max_t T)): 1 reads every noise level, as classifier guidance needs; lower
            trains a classifier of nearly clean images (the semi-supervised Joint Diffusion reads
            its labelled batch at t = 1 of 1000).
        head_augment: what happens to the head's labelled batch before it is noised, as the
            semi-supervised Joint Diffusion augments its labelled loader (colour, crops, rotations
            and MixUp there): ``dihedral`` turns and mirrors each image by one of the square's eight
            symmetries (for data whose labels do not depend on the view, as cell crops; pixel space
            only: a latent's turn is not the latent of the turned image); ``mixup`` blends half the
            rows with another row of the batch (weight uniform in [0, 1]) and their cross-entropies
            with the same weights (Zhang et al. 2018). Empty (the default): the batch as drawn.
        head_conditioned: whether the head's factors' codes reach the denoiser in the diffusion
            loss (with the usual dropout). False: they are always absent there, so the UNet's
            features must carry those factors themselves, as in Joint Diffusion, whose UNet is
            unconditional; their codes then do not steer generation (classifier guidance does).
        label_fraction: the share of training images whose labels the head sees (drawn once with
            the run's seed); the codes and the denoiser see every training image.
        control: channels of the data (by name, ``data.channels``) that condition the denoiser as
            an image instead of being generated: a ControlNet branch (``diffusion/control.py``)
            reads them, e.g. ``["BF"]`` for brightfield -> stains. It trains in a ``control``
            stage after the denoiser, which stays frozen. Empty: no control.
        control_steps: optimisation steps of the ``control`` stage (batch ``batch_size``, ``lr``,
            ``ema_decay`` as the denoiser's).
        control_budget: the ``control`` stage's share of ``train.minutes``, beside ``budget``.
    """

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 1
    attention: bool = False
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    adapter_hidden: int = 256
    cond_dropout: float = 0.1
    dropout_schedule: Literal["independent", "with_singles"] = "independent"
    single_prob: float = 0.0
    coind_weight: float = 0.0
    coind_rows: int | None = None
    adapter: Literal["embed", "tokens", "shift"] = "embed"
    token_dim: int = 64
    branch_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    train_base: bool = True
    sampler: Literal["ddim", "dpmsolver++"] = "ddim"
    inference_precision: Literal["fp32", "bf16"] = "fp32"
    structure: str | None = None
    structure_control: str = "DMSO"
    head: list[str] = field(default_factory=list)
    head_weight: float = 1.0
    head_batch: int = 32
    head_max_t: float = 1.0
    head_augment: list[Literal["dihedral", "mixup"]] = field(default_factory=list)
    head_conditioned: bool = True
    label_fraction: float = 1.0
    control: list[str] = field(default_factory=list)
    control_steps: int = 4000
    control_budget: float = 0.3
    steps: int = 24000
    budget: float = 0.62
    batch_size: int = 64
    lr: float = 4e-4
    ema_decay: float = 0.999


@dataclass
class DaedConfig:
    """DAED (Deja, Kuzina, Trzcinski & Tomczak 2022, "On analyzing generative and denoising
    capabilities of diffusion-based deep generative models"): a denoising autoencoder takes over
    the low-noise end of the chain (``diffusion/daed.py``).

    With ``enabled`` (``fit --model daed``) a ``daed`` stage trains, after the denoiser, a second UNet
    (unconditioned, of ``block_out_channels``; None: the denoiser's) that maps x_t to x_0 in one
    pass for every t up to ``split`` of the schedule (EDM-preconditioned: the identity plus a learned
    correction). Every chain of the run (samples, edits,
    regeneration) then stops at t = ``split`` T and the DAE finishes it; ``factordiff denoise``
    denoises in that one pass. The denoiser itself trains on the whole schedule as before.

    Args:
        split: the share of the noise schedule the DAE covers (the paper's split point).
        block_out_channels: the DAE's UNet channels per level (None: ``denoiser.block_out_channels``).
        parameterization: how the UNet's output makes x_0: ``v``, as a velocity (the diffusion
            objective's form), or ``edm``, through EDM's preconditioning (``diffusion/daed.py``:
            ``v`` denoised real crops better from a Shapes-trained DAE, 0.031 against 0.045). A
            model saved before this field existed is read as ``edm``.
    """

    enabled: bool = False
    split: float = 0.1
    block_out_channels: list[int] | None = None
    parameterization: Literal["v", "edm"] = "v"
    steps: int = 6000
    budget: float = 0.2
    batch_size: int = 64
    lr: float = 4e-4
    ema_decay: float = 0.999


@dataclass
class UnsupervisedConfig:
    """The unsupervised encoder (PDAE gradient estimator on a frozen base, DiffSiam segments).

    With ``enabled``, no factor label reaches training: the stages are the autoencoder, the
    unconditional base denoiser (the ``denoiser`` section) and then this encoder with its branch.

    Args:
        segments: S, code segments switched on progressively with the time step.
        code_dims: dimensions of each segment.
        width: channels of the encoder's first convolution.
        branch_channels: UNet channels of the gradient-estimator branch.
        snr_gamma: gamma of PDAE's loss weight snr^gamma / (1 + snr).
        base: a supervised image run folder (or a shipped model's name, ``shapes32``) whose
            autoencoder and denoiser become the frozen base: the denoiser runs with every factor
            absent (its learned null tokens: the unconditional model of classifier-free guidance),
            only the encoder and its branch train, and the run's ``autoencoder`` and ``denoiser``
            sections are replaced by the base's. None: the fit trains an autoencoder and a base.
        base_blocks: the base denoiser's number of factor blocks; written by the fit from ``base``.
        adapter: how the branch reads the code: ``embed`` (the whole code through an MLP into the
            time embedding) or ``tokens`` (one token per segment, read by cross-attention layers,
            as EncDiff's concept tokens; ``denoiser.token_dim`` wide).
        unmix: the code's basis inside each segment, fitted after training on training images'
            codes (no label): ``ica`` (FastICA: independent components of unit variance, the branch
            mixing them back so that predictions do not change) or ``none`` (the encoder's raw
            output). Configs saved before the option existed read ``none``.
    """

    enabled: bool = False
    segments: int = 6
    code_dims: int = 4
    width: int = 16
    branch_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    steps: int = 12000
    budget: float = 0.4
    batch_size: int = 64
    lr: float = 4e-4
    snr_gamma: float = 0.1
    base: str | None = None
    base_blocks: int = 0
    adapter: Literal["embed", "tokens"] = "embed"
    unmix: Literal["none", "ica"] = "ica"


@dataclass
class TrainConfig:
    """Args:
    minutes: wall-clock budget of the whole fit (None: run every stage to its ``steps``).
    seed: seeds data order, noise and initialisation.
    checkpoint_every: steps between checkpoints.
    keep_last: checkpoints kept per stage.
    grad_clip: max gradient norm (0 disables).
    threads: torch CPU threads (0: torch's default).
    precision: ``fp32``, or ``bf16``: each step's forward pass and loss under bf16 autocast (the
        weights, gradients, optimizer and EMA stay fp32; bf16 needs no loss scaling). A CPU with
        bf16 instructions or a GPU trains the convolutions faster (``benchmarks/train_speed.py
        --precision bf16``); not the default, because a CPU without them runs bf16 slower.
    compile: ``torch.compile`` the UNets while they train (static shapes; minutes of compilation
        per stage, then faster steps: ``benchmarks/train_speed.py --compile``); weights and
        checkpoints are the same as without it. Refused with bf16 and the ``tokens`` adapter: torch
        2.13's inductor compiles its cross-attention's backward wrongly in bf16 with AVX-512 (NaN
        gradients at the first step; attention by matrix products fails too); with AVX2 code
        (``cpp.simdlen=256``) it trains right but loses the compile's speed (ratio 1.01).
    """

    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 2
    grad_clip: float = 1.0
    threads: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False


@dataclass
class EvaluateConfig:
    """Args:
    sources: source images per kind of edit (seen, held-out).
    counterfactual_sources: the same for the per-factor counterfactual figures alone (None:
        ``sources``); the Cell Painting figures keep ``sources``. cellsim's defaults set 50: its
        counterfactual matrix (six factors, every kind of edit) was 9 of its 21 minutes at 100.
    steps: solver steps of an edit's inversion and of its regeneration (each; an edit costs twice
        as many network passes), over the part of the schedule that ``edit_strength`` says.
        5 with the DDPM inversion at ``edit_strength`` 0.65, from ``benchmarks/nfe.py``: within an
        edit budget of 10 passes, the setting whose seen edits are most often all right (0.978;
        reported on held-out: one-factor edits all right 0.922, two-factor 0.927, the mean of three
        oracles, against 0.918 and 0.91 for the earlier 40-pass DDIM default).
    edit_strength: how far up the noise schedule an edit inverts its source, as a share of it
        (SDEdit's strength; 1 = to pure noise). Lower keeps more of the source (one-factor
        held-out edits all right at 20 steps: 0.84 at 1, 0.92 at 0.65, 0.93 at 0.5) but leaves
        less room to change two factors at once (0.93, 0.91, 0.86); the reconstructions,
        soundness measures and ``counterfactual``/``regenerate`` use it too.
    edit_residual: whether an edit is the source plus the change that the model makes between its
        regenerations under the new and the source's own codes from the same inversion
        (``FactorModel.edit``), instead of the regeneration under the new codes alone; it keeps
        what the model cannot reconstruct of the source, for one more chain per edit. ``"marginal"``:
        residual, with only the factors of the changed factors' roles present in the inversion and
        both regenerations (``FactorModel.marginal_present``): a batch swap becomes the model's
        batch effect over all compounds, never its picture of an unseen compound x batch pair.
    edit_inversion: how an edit inverts its source: ``ode``, the probability-flow ODE with
        ``denoiser.sampler`` (DDIM inversion); ``ddpm``, the edit-friendly DDPM inversion
        (``diffusion.sampling.ddpm_invert``): exact at any step count, so an edit needs fewer.
    technical_strength, technical_guidance, technical_residual: the ``edit_strength``,
        ``guidance`` and ``edit_residual`` of an edit that changes technical factors only (role
        ``technical``: batch, plate, source), in ``factordiff regenerate``, ``counterfactual`` and
        the Cell Painting figures (None: the general ones). A batch swap changes intensities,
        illumination and blur but no cell, so it wants a shallow, residual edit; a compound
        change moves cells, so it wants a deep one with strong guidance.
    sample_steps: solver steps of samples from noise: 5, from ``benchmarks/nfe.py`` (the fewest
        whose oracle-judged rates are within 0.01 of 100 steps': held-out samples all right 0.985
        at 5 and at 100 steps; the samples look alike, see the README).
    guidance: classifier-free guidance weight on the changed factor (1 = none).
    guidance_form: how samples from noise combine the factors' conditions: ``joint`` (one condition
        with every factor), ``composed`` (per-factor conditions summed) or ``nested`` (factors
        added one at a time); see ``factordiff.diffusion.guidance``.
    sample_guidance: guidance weight of every factor in samples from noise (joint: ordinary
        classifier-free guidance, 1 = none; composed and nested: each factor's weight).
    soundness_sources: source images of the soundness measures (each costs 12 inversions and
        12 generations).
    oracle_steps: optimisation steps of the oracle classifier.
    oracle_images: images it learns from (fresh renders for the built-in data).
    """

    sources: int = 100
    counterfactual_sources: int | None = None
    steps: int = 5
    edit_strength: float = 0.65
    edit_residual: bool | Literal["marginal"] = False
    edit_inversion: Literal["ode", "ddpm"] = "ddpm"
    technical_strength: float | None = None
    technical_guidance: float | None = None
    technical_residual: bool | Literal["marginal"] | None = None
    sample_steps: int = 5
    guidance: float = 2.0
    guidance_form: Literal["joint", "composed", "nested"] = "joint"
    sample_guidance: float = 1.0
    soundness_sources: int = 32
    oracle_steps: int = 1500
    oracle_images: int = 60000


@dataclass
class ProfilesConfig:
    """Profile tables (``data.source = "profiles:TABLE"``): cleaning, the MLP denoiser, evaluation.

    Args:
        roles: ``"FACTOR=biological"`` or ``"FACTOR=technical"`` per factor (others: technical when
            the name says batch, plate, well, source, date..., else biological).
        max_missing: feature columns with a larger share of missing values on training rows are
            dropped, then columns constant on training rows, then rows with any missing value.
        feature_select: pycytominer ``feature_select`` operations run on the training rows after
            that: ``variance_threshold``, ``correlation_threshold``, ``blocklist`` (none by default).
        normalize: ``none`` (the table is already normalised), ``plate`` (robust z-score to each
            plate's training rows) or ``controls`` (to each plate's training control rows).
        plate_column: the plate column for ``normalize`` (None: the metadata column named *Plate).
        controls: the control condition ``"FACTOR=VALUE"`` (e.g. ``Metadata_Compound=DMSO``).
        moa: metadata column with the mechanism of action, for the unseen-perturbation retrieval.
        width, depth: the MLP denoiser's hidden width and residual blocks.
        code_dims: dimensions of each factor's code (a learned embedding of its value; an
            ordinal factor's code is a function of its position on the factor's axis).
        steps, batch_size, lr: training of the denoiser with its codes.
        cond_dropout: probability that each factor is absent in a training example (and that all are).
        guidance_biological, guidance_technical: guidance weight on changed factors of each role.
        sample_steps: DDIM steps for inversion and regeneration.
        residual: ``none`` (the denoiser models the standardised profile) or ``ridge`` (an additive
            ridge model of the profile on one-hot factors, fitted on training rows, carries each
            factor's mean effect and the denoiser models what it leaves: the residual and the
            interactions between factors).
        perturbation_embedding: how the perturbation factor (the one ``controls`` names) is coded:
            ``onehot`` (a learned embedding per value; a value no training row had is absent),
            ``morgan`` (an MLP of each compound's Morgan fingerprint, so an unseen compound has a
            code from its structure) or ``table:PATH`` (an MLP of a user's embedding table, CSV:
            name, then numbers). Controls always get a learned code of their own.
        smiles: metadata column with each row's SMILES, for ``morgan`` (None: the perturbation's
            values are SMILES themselves).
        fingerprint_bits: Morgan fingerprint length (radius 2), 1024 or 2048.
        start: where a regeneration's chain starts: ``source`` (the DDIM inversion of the source
            row under its own codes: the row's own variation carried over) or ``noise`` (fresh
            noise, seeded, at the edit's strength: at strength 1 a new well of the target condition
            that shares only the source's unchanged factor values). ``regenerate --start``
            overrides it; ``benchmarks/profiles.py`` chooses it on a validation cell of training rows.
    """

    roles: list[str] = field(default_factory=list)
    max_missing: float = 0.05
    feature_select: list[str] = field(default_factory=list)
    normalize: Literal["none", "plate", "controls"] = "none"
    plate_column: str | None = None
    controls: str | None = None
    moa: str | None = None
    width: int = 128
    depth: int = 2
    code_dims: int = 16
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    cond_dropout: float = 0.2
    guidance_biological: float = 1.0
    guidance_technical: float = 1.0
    sample_steps: int = 50
    residual: Literal["none", "ridge"] = "none"
    perturbation_embedding: str = "onehot"
    smiles: str | None = None
    fingerprint_bits: Literal[1024, 2048] = 1024
    start: Literal["source", "noise"] = "source"


@dataclass
class SetsConfig:
    """Diffusion over populations of cells (after scLDM; ``fit --model set`` on a single-cell
    ``profiles:TABLE``): each set is the cells of one field or well (the rows sharing ``column``),
    each cell its feature vector; ``diffusion/sets.py`` holds the parts.

    Args:
        enabled: make a set run (``fit --model set``).
        column: the metadata column naming each row's set (``--set-column``, e.g. Metadata_Well);
            every factor must be constant within a set.
        cells: cells drawn from a set per training example (with replacement from smaller sets).
        tokens, dim: the latent tokens of a set and their width.
        width, depth, heads: the autoencoder's and the diffusion transformer's hidden width, the
            transformer's blocks, attention heads.
        code_dims: dimensions of each factor's code.
        views: token draws per training set for the transformer (each from a fresh draw of cells).
        autoencoder_steps, autoencoder_budget, sets_per_step: the set autoencoder's training.
        steps, budget, batch_size, lr: the transformer's training with the codes (the budgets are
            shares of ``train.minutes``).
        cond_dropout: probability that each factor is absent in a training example (and all are).
        guidance: classifier-free guidance weight on the factors a regeneration sets.
        sample_steps: sampler steps of a regeneration.
    """

    enabled: bool = False
    column: str | None = None
    cells: int = 64
    tokens: int = 8
    dim: int = 16
    width: int = 128
    depth: int = 4
    heads: int = 4
    code_dims: int = 8
    views: int = 32
    autoencoder_steps: int = 3000
    autoencoder_budget: float = 0.4
    sets_per_step: int = 16
    steps: int = 4000
    budget: float = 0.6
    batch_size: int = 64
    lr: float = 4e-4
    cond_dropout: float = 0.1
    guidance: float = 2.0
    sample_steps: int = 50


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    unsupervised: UnsupervisedConfig = field(default_factory=UnsupervisedConfig)
    daed: DaedConfig = field(default_factory=DaedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    sets: SetsConfig = field(default_factory=SetsConfig)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists to tuples where declared)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except FactordiffError as e:
                errors.append(str(e))
        raise FactordiffError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise FactordiffError(
                f"{where}: expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FactordiffError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise FactordiffError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FactordiffError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise FactordiffError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise FactordiffError(f"{where}: expected a string, got {value!r}")
        return value
    raise FactordiffError(f"{where}: unsupported type {_type_name(tp)}")


# Options that were measured and removed: (section class, field) -> the one value that means what
# the code now does. Configs of earlier runs that hold it still load; any other value is refused.
RETIRED = {
    ("DistillConfig", "pool"): "flatten"
}  # flatten+mean: worse held-out read-out (benchmarks/distill_heldout.py)


def saved_before(data: dict[str, Any]) -> dict[str, Any]:
    """A config that ``fit`` saved (it writes every field) before a field existed, with that field
    set to what the code then did: a DAED run's ``daed.parameterization`` was ``edm``, an
    unsupervised run's ``unsupervised.unmix`` was ``none`` (runs without them are left as they are,
    so that they resume under today's defaults)."""
    daed = data.get("daed") if isinstance(data.get("daed"), dict) else {}
    others = {f.name for f in dataclasses.fields(DaedConfig)} - {"parameterization"}
    if daed.get("enabled") and "parameterization" not in daed and others <= set(daed):
        data = {**data, "daed": {**daed, "parameterization": "edm"}}
    u = data.get("unsupervised") if isinstance(data.get("unsupervised"), dict) else {}
    others = {f.name for f in dataclasses.fields(UnsupervisedConfig)} - {"unmix"}
    if u.get("enabled") and "unmix" not in u and others <= set(u):
        data = {**data, "unsupervised": {**u, "unmix": "none"}}
    return data


# Defaults that depend on the data source, applied where the config does not set the field.
# cellsim diffuses in pixel space (a UNet of 32, 64, 128 channels): the latent autoencoder's round
# trip alone kept the compound of 0.10 of top-dose fields where copying them kept 0.70 (a 16x16x4
# latent after the 15-minute budget's 4.5 minutes), and batch swaps kept it on 0.05; in pixel space
# at the same budget the swaps kept it on 0.40 (copying: 0.93). Its oracle trains 6,000 steps on
# 60,000 fresh fields (compound read on 0.83 of fresh fields, dose 0.84; 0.65 and 0.64 on 20,000).
# Its edit settings were chosen on training combinations only, on the 20-minute benchmark run
# (`benchmarks/cells.py --edits`, README): batch swaps into seen compound x batch combinations
# (target batch / compound kept) gave 0.99 / 0.58 for a plain edit at strength 1, 0.89 / 0.85 at
# 0.55, and as residual edits 0.97 / 0.60 at 1, 0.99 / 0.81 at 0.6, 0.98 / 0.85 at 0.55 and
# 0.96 / 0.89 at 0.5 (guidance 2); a first draw of seen swaps had 0.5 and 0.55 tied (0.83) with
# 0.55 nearer the target, so technical edits are residual at 0.55 (on the run with today's
# distiller, 0.5 / 0.55 / 0.6 gave 0.88 / 0.91 / 0.98 target and 0.79 / 0.77 / 0.77 compound kept:
# 0.55 stays). Compound edits take the guidance at which the oracle names the training compounds'
# edits most often while their mean stays nearer the compound than the controls' mean is
# (benchmarks/compound_guidance.py): 5 (0.58, mean distance 0.80; 8 gives 0.51 and 1.07). The
# distiller trains 4,000 steps (0.15 of the budget): after 1,500 it read the compound on 0.41 of
# fresh fields, after 4,000 on 60,000 fields 0.82 (benchmarks/cellsim_distiller.py). Those
# settings were measured with the ODE inversion at 20 steps, which cellsim keeps (the DDPM
# inversion at 5 steps, the default since, was chosen on the Shapes quickstart).
SOURCE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "cellsim": {
        "evaluate": {
            "steps": 20,
            "edit_inversion": "ode",
            "edit_strength": 1.0,
            "guidance": 5.0,
            "counterfactual_sources": 50,
            "oracle_steps": 6000,
            "technical_strength": 0.55,
            "technical_guidance": 2.0,
            "technical_residual": True,
        },
        "autoencoder": {"enabled": False},
        "denoiser": {"block_out_channels": [32, 64, 128]},
        "distill": {"steps": 4000, "budget": 0.15},
    },
    # crop runs (real BBBC021 crops, cropped fields): their edit options and every figure of
    # benchmarks/real_cells.py were measured with the ODE inversion at 20 steps
    "crops:": {"evaluate": {"steps": 20, "edit_inversion": "ode"}},
    "fields:": {"evaluate": {"steps": 20, "edit_inversion": "ode"}},
}


def source_defaults(source: str | None) -> dict[str, dict[str, Any]]:
    """The ``SOURCE_DEFAULTS`` of ``source``: a built-in source's by name, a file source's by its
    kind (``crops:``, ``fields:``)."""
    if not isinstance(source, str):
        return {}
    return SOURCE_DEFAULTS.get(source) or SOURCE_DEFAULTS.get(source.split(":", 1)[0] + ":", {})


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown fields and wrong types (a
    ``RunConfig`` first takes its data source's ``SOURCE_DEFAULTS`` for fields it leaves unset)."""
    if not isinstance(data, dict):
        raise FactordiffError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    source = data["data"].get("source") if cls is RunConfig and isinstance(data.get("data"), dict) else None
    for section, fields in source_defaults(source).items():
        if isinstance(data.get(section, {}), dict):
            data = {**data, section: {**fields, **data.get(section, {})}}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in [k for k in data if (cls.__name__, k) in RETIRED]:
        if data[key] != RETIRED[cls.__name__, key]:
            raise FactordiffError(
                f"{where}.{key}: this option was removed; only {RETIRED[cls.__name__, key]!r} (what the code "
                f"does) is accepted, got {data[key]!r}"
            )
        data = {k: v for k, v in data.items() if k != key}
    for key in data:
        if key not in names:
            shown = (
                key if isinstance(key, str) and key.isprintable() else repr(key)
            )  # one line, whatever the file held
            raise FactordiffError(
                f"{where}.{shown}: unknown field; expected one of {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    _check_ranges(obj, where)
    return obj


_POSITIVE = {
    "head_batch",
    "size",
    "crop",
    "tiles",
    "code_dims",
    "ordinal_dims",
    "width",
    "steps",
    "control_steps",
    "batch_size",
    "latent_channels",
    "layers_per_block",
    "sources",
    "counterfactual_sources",
    "checkpoint_every",
    "keep_last",
    "oracle_steps",
    "oracle_images",
    "num_train_timesteps",
    "adapter_hidden",
    "segments",
    "depth",
    "sample_steps",
    "coind_rows",
    "soundness_sources",
}
_NONNEGATIVE = {
    "lr",
    "base_blocks",
    "adversary_weight",
    "order_weight",
    "feature_weight",
    "latent_weight",
    "budget",
    "control_budget",
    "grad_clip",
    "threads",
    "minutes",
    "guidance",
    "snr_gamma",
    "max_missing",
    "guidance_biological",
    "guidance_technical",
    "technical_guidance",
    "coind_weight",
    "sample_guidance",
    "head_weight",
}


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if f.name in _POSITIVE and v <= 0:
            raise FactordiffError(f"{where}.{f.name}: expected a positive number, got {v}")
        if f.name in _NONNEGATIVE and v < 0:
            raise FactordiffError(f"{where}.{f.name}: expected a number >= 0, got {v}")
    if isinstance(obj, (DenoiserConfig, ProfilesConfig)) and not 0 <= obj.cond_dropout < 1:
        raise FactordiffError(
            f"{where}.cond_dropout: expected a probability in [0, 1), got {obj.cond_dropout}"
        )
    if isinstance(obj, EvaluateConfig):
        for name in ("edit_strength", "technical_strength"):
            if getattr(obj, name) is not None and not 0 < getattr(obj, name) <= 1:
                raise FactordiffError(
                    f"{where}.{name}: expected a share of the noise schedule in (0, 1], "
                    f"got {getattr(obj, name)}"
                )
    if isinstance(obj, DaedConfig) and not 0 < obj.split < 1:
        raise FactordiffError(
            f"{where}.split: expected a share of the noise schedule in (0, 1), got {obj.split}"
        )
    if isinstance(obj, DenoiserConfig) and not 0 < obj.head_max_t <= 1:
        raise FactordiffError(f"{where}.head_max_t: expected a share in (0, 1], got {obj.head_max_t}")
    if isinstance(obj, DenoiserConfig) and not 0 < obj.label_fraction <= 1:
        raise FactordiffError(f"{where}.label_fraction: expected a share in (0, 1], got {obj.label_fraction}")
    if isinstance(obj, DenoiserConfig) and obj.control:
        clash = [
            name
            for name, on in (
                ("head", bool(obj.head)),
                ("structure", obj.structure is not None),
                ("coind_weight", obj.coind_weight > 0),
                ("adapter=shift", obj.adapter == "shift"),
            )
            if on
        ]
        if clash:
            raise FactordiffError(f"{where}.control: not with {', '.join(clash)} (a controlled run has none)")
    if isinstance(obj, DenoiserConfig) and not 0 <= obj.single_prob <= 1:
        raise FactordiffError(f"{where}.single_prob: expected a probability in [0, 1], got {obj.single_prob}")
    if isinstance(obj, ProfilesConfig):
        check_embedding_kind(obj.perturbation_embedding, f"{where}.perturbation_embedding")
        if obj.perturbation_embedding != "onehot" and not obj.controls:
            raise FactordiffError(
                f"{where}.perturbation_embedding: {obj.perturbation_embedding} needs profiles.controls "
                "(--controls), which names the perturbation factor and its control"
            )
    if isinstance(obj, RunConfig) and obj.train.compile and obj.train.precision == "bf16":
        if obj.denoiser.adapter == "tokens":  # torch 2.13 inductor, AVX-512, bf16: see TrainConfig.compile
            raise FactordiffError(
                f"{where}.train.compile: not with train.precision bf16 and the tokens adapter (torch's "
                "compiled bf16 cross-attention gives NaN gradients on CPU); drop one of them"
            )
    if isinstance(obj, RunConfig) and "dihedral" in obj.denoiser.head_augment and obj.autoencoder.enabled:
        raise FactordiffError(
            f"{where}.denoiser.head_augment: dihedral needs pixel space (autoencoder.enabled false): "
            "a turned latent is not the latent of the turned image"
        )
    if isinstance(obj, SplitConfig) and obj.kind not in SPLIT_KINDS:
        raise FactordiffError(f"{where}.kind: expected one of {', '.join(SPLIT_KINDS)}, got {obj.kind!r}")


def parse_config_text(text: str, suffix: str, where: str) -> dict[str, Any]:
    """Parse JSON (``.json``), TOML (``.toml``) or YAML (``.yaml``/``.yml``) text into a mapping."""
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise FactordiffError(f"{where}: expected a .json, .toml, .yaml or .yml file")
    except FactordiffError:
        raise
    except Exception as e:  # each parser has its own error type; all mean "not valid syntax"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FactordiffError(f"{where}: not valid {suffix.lstrip('.').upper()} ({msg})") from None
    return {} if data is None else data


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a RunConfig from a file (or defaults), then apply ``{"section.field": value}`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise FactordiffError(f"{path}: cannot read config ({e.__class__.__name__})") from None
        data = parse_config_text(text, path.suffix.lower(), str(path))
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        node = data.setdefault(section, {})
        if not isinstance(node, dict):
            raise FactordiffError(f"config.{section}: expected a mapping of fields")
        node[name] = value
    return from_dict(RunConfig, data, "config")
