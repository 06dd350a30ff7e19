"""Train one replica of a recipe under a noise setting.

`train_replica(spec)` is the training loop of the project; `build_replica`, `start_epoch` and
`train_step` are its pieces, which `locate` drives in lockstep (instrumenting the one step, not
copying it). Data sits on the device as uint8; each epoch draws its order from the *order*
stream and its augmentation from the *aug* stream; the model is initialised from the *init*
stream and drops out with the *dropout* stream. Epoch-end checkpoints hold every generator's
state, so a killed replica resumes bit-identically. Storing results is `cell.run_cell`'s job:
this module knows nothing of the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import environment, models, noise, params, stream
from .files import write_atomic

# ----------------------------------------------------------------------------- the recipe
_RECIPE = params.RECIPE_DEFAULTS  # the defaults of the fields that are notebook parameters: one definition


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything that defines one replica. Defaults: the paper's SmallCNN recipe on digits.

    The fields named like the training notebook's parameters mean what `params` says they mean,
    take their defaults from it and are judged by its rules (`validate_spec`).
    """

    dataset: str = "digits"  # a name in data.LOADERS
    model: str = "smallcnn"  # a name in models.MODELS
    setting: str = "CONTROL"  # a name in noise.SETTINGS
    replica: int = 0  # replica index k >= 0 (seeds of varied sources derive from it)
    epochs: int = _RECIPE["epochs"]
    batch_size: int = _RECIPE["batch_size"]
    lr: float = _RECIPE["lr"]  # paper: 4e-4
    lr_milestones: tuple[int, ...] = tuple(_RECIPE["lr_milestones"])  # epochs: lr *= lr_decay
    lr_decay: float = 0.1  # paper: 4e-4 for epochs 0-49, 4e-5 for 50-99, 4e-6 after
    adam_eps: float = 1e-7  # Keras' Adam epsilon, as in the paper's code
    weight_decay: float = _RECIPE["weight_decay"]  # L2 coefficient added to the loss as wd * ||w||^2 (Keras l2)
    # The paper's recipes (issue 10). Their defaults give the bits of the runs stored before they existed;
    # `to_dict` leaves a field out while it holds its default (`LATER_FIELDS`).
    optimizer: str = _RECIPE["optimizer"]  # adam, or sgd with Keras' momentum (`KerasSGD`)
    momentum: float = _RECIPE["momentum"]  # SGD only
    nesterov: bool = _RECIPE["nesterov"]  # SGD with momentum only
    warmup_epochs: int = _RECIPE["warmup_epochs"]  # linear warm-up from 0, per step (`lr_at`)
    label_smoothing: float = _RECIPE["label_smoothing"]  # of the training loss (`cross_entropy`)
    init: str = _RECIPE["init"]  # a name in models.INITS, drawn from the init stream
    normalization: str = _RECIPE["normalization"]  # "": the dataset's own; unit or standardize
    image_size: int = _RECIPE["image_size"]  # 0: the dataset's own; else the loader's square side
    target: str = _RECIPE["target"]  # "": the dataset's own; CelebA: an attribute, or "all" (multi-label)
    dropout: float = _RECIPE["dropout"]  # the paper uses none
    augment: bool = _RECIPE["augment"]
    base_seed: int = _RECIPE["base_seed"]
    device: str = _RECIPE["device"]
    threads: int | None = _RECIPE["threads"]  # None leaves torch's thread count alone
    precision: str = _RECIPE["precision"]
    eval_batch_size: int = _RECIPE["eval_batch_size"]
    snapshot_epochs: tuple[int, ...] = tuple(_RECIPE["snapshot_epochs"])  # test predictions also kept after these
    keep_probabilities: bool = _RECIPE["keep_probabilities"]  # False: the store keeps predictions only
    test_every_epoch: bool = _RECIPE["test_every_epoch"]  # False: test metrics at snapshots and the end only
    extra_tests: bool = _RECIPE["extra_tests"]  # False: the dataset's extra test sets are not evaluated
    data_root: str | None = None  # real datasets' root (else $NNRANDOMNESS_DATA)
    fill_uninitialized_memory: bool | None = None  # None: torch's default with the flag
    cublas_workspace_config: str | None = None  # recorded factor; None leaves it unset

    def to_dict(self) -> dict:
        """The spec as manifests and checkpoints store it. A field of `LATER_FIELDS` is left out while it
        holds its default: a default recipe's dict is the one written before the field existed (stored
        runs and checkpoints still match it), and a stored dict without it means its default."""
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["snapshot_epochs"] = list(self.snapshot_epochs)
        for name in LATER_FIELDS:
            if d[name] == _FIELD_DEFAULTS[name]:
                del d[name]
        return d

    def dataset_options(self) -> dict:
        """The loader options of the recipe's input options (`data.input_options`): {} for the defaults.
        Load the spec's data with ``data.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())``."""
        return data_mod.input_options(self.dataset, self.normalization, self.image_size, self.target)

    @classmethod
    def from_parameters(cls, values: Mapping, setting: str, replica: int = 0) -> ReplicaSpec:
        """The spec of one replica of `setting` under the training notebook's parameters `values`.

        The one mapping from parameters to a spec: the notebook and the runner (`plan.Job.spec`) use it.
        """
        fields = {n: values[n] for n in _PARAMETER_FIELDS}
        fields.update(
            lr_milestones=tuple(values["lr_milestones"]),
            snapshot_epochs=tuple(values["snapshot_epochs"]),
            data_root=values["data_root"] or None,
        )
        return cls(**fields, setting=setting, replica=replica)

    def parameters(self) -> dict:
        """The notebook parameters this spec's fields hold, written as the notebook writes them."""
        values = {n: getattr(self, n) for n in _PARAMETER_FIELDS}
        as_list = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731 (a wrong type stays, to be refused)
        values.update(
            settings=[self.setting],
            data_root=self.data_root or "",
            lr_milestones=as_list(self.lr_milestones),
            snapshot_epochs=as_list(self.snapshot_epochs),
        )
        if self.threads is None:  # a spec may leave torch's thread count alone; a notebook may not
            del values["threads"]
        return values

    @property
    def noise(self) -> noise.NoiseSetting:
        return noise.get_setting(self.setting)

    def backend(self) -> noise.BackendConfig:
        return noise.BackendConfig(
            deterministic=self.noise.deterministic,
            threads=self.threads,
            precision=self.precision,
            fill_uninitialized_memory=self.fill_uninitialized_memory,
            cublas_workspace_config=self.cublas_workspace_config,
        )


# The notebook parameters that are fields of the spec under the same name.
_PARAMETER_FIELDS = [n for n in params.PARAMETERS if n in {f.name for f in dataclasses.fields(ReplicaSpec)}]
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReplicaSpec)}
# The fields added with the paper's recipes, after runs had been stored without them (`ReplicaSpec.to_dict`).
LATER_FIELDS = (
    "optimizer",
    "momentum",
    "nesterov",
    "warmup_epochs",
    "label_smoothing",
    "init",
    "normalization",
    "image_size",
    "target",
)


def validate_spec(spec: ReplicaSpec, check_data: bool = True) -> None:
    """Raise a clear ValueError (or FileNotFoundError for missing data) before any work.

    The fields that are notebook parameters are judged by the parameters' own rules (`params`), so
    that a value is refused by one rule wherever it enters; the spec's other fields here.
    """
    values = spec.parameters()
    errors = params.value_errors(values)
    if e := params.integer_error(spec.replica, 0):
        errors.append(f"replica {e}")
    if isinstance(spec.lr_decay, bool) or not isinstance(spec.lr_decay, (int, float)) or not spec.lr_decay > 0:
        errors.append(f"lr_decay must be a positive number, got {spec.lr_decay!r}")
    if not errors and (e := params.setting_error(spec.setting, values)):
        errors.append(e)
    if not errors:
        errors += params.recipe_errors(values)
    if errors:
        raise ValueError("; ".join(errors))
    noise.validate_backend(spec.backend())  # the cuBLAS workspace setting
    if check_data:  # files on disk (skipped when the caller passes the loaded data)
        data_mod.check_dataset(spec.dataset, spec.data_root)


# ----------------------------------------------------------------------------- results
@dataclass
class ReplicaResult:
    """What one replica produced: history, final test predictions, final weights, provenance."""

    spec: ReplicaSpec
    seeds: dict[str, int]
    history: pd.DataFrame  # one row per epoch
    predictions: np.ndarray  # (N,) predicted class per test example
    probabilities: np.ndarray | None  # (N, C) float32 softmax; None when the spec keeps no probabilities
    labels: np.ndarray  # (N,) test labels
    groups: np.ndarray | None  # (N,) group attribute, or None
    weights: dict[str, torch.Tensor]  # final state_dict on the CPU (parameters and buffers)
    backend: dict  # requested and effective backend flags
    environment: dict
    perturbation: dict | None = None
    timings: dict = field(default_factory=dict)
    resumed_from_epoch: int | None = None
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # epoch -> (N,) test predictions after it
    # The dataset's extra test sets, evaluated at the end: {"seeds": [...], "n": [...], "accuracy": [...]}.
    extra_tests: dict | None = None
    # A multi-label dataset's output names (`data.Dataset.multilabel`): predictions, labels and snapshots are
    # then (N, K) of 0/1, column k for label_names[k], and probabilities sigmoid outputs. None: one class each.
    label_names: list[str] | None = None


# ----------------------------------------------------------------------------- pieces
def lr_at(spec: ReplicaSpec, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The learning rate of step `step` (0-based) of the `steps` steps of epoch `epoch` (0-based).

    Step schedule: lr * decay ** (number of milestones <= epoch). A warm-up of W = warmup_epochs
    multiplies the first W * steps steps by s / (W * steps), s the step's index from 0 counted over
    epochs: a ramp per step, as the paper's ResNet-50 (TF official models'
    PiecewiseConstantDecayWithWarmup: lr * step / warmup_steps, so its first step has lr 0). Per step
    and not per epoch because that is the recipe: a per-epoch ramp would start SGD at lr/5 on one
    whole epoch and climb in four stairs. With the defaults (step 0 of 1) the value is the epoch's first
    step's, which the history records.
    """
    lr = spec.lr * spec.lr_decay ** sum(epoch >= m for m in spec.lr_milestones)
    warmup, s = spec.warmup_epochs * steps, epoch * steps + step
    return lr * (s / warmup) if s < warmup else lr


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy via one-hot and log-softmax, against labels smoothed by `smoothing`.

    Written out instead of F.cross_entropy because torch documents NLLLoss as lacking a
    deterministic CUDA implementation; elementwise ops and reductions have one. Smoothing as Keras'
    `label_smoothing`: the target is one_hot * (1 - smoothing) + smoothing / classes. At 0 the ops are
    those of the runs stored before it existed (no smoothing arithmetic at all).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    target = F.one_hot(labels, logits.shape[1]).to(logp.dtype)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / logits.shape[1]
    return -(target * logp).sum(1).mean()


def binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over examples x outputs (a multi-label head: one sigmoid per column of
    the (N, K) 0/1 `labels`), against labels smoothed by `smoothing` as Keras' BinaryCrossentropy does:
    y * (1 - smoothing) + smoothing / 2. Keras' mean over outputs then over the batch is this mean.

    -[y log sigmoid(z) + (1 - y) log sigmoid(-z)] = softplus(z) - y z, written out with elementwise ops
    and one mean for the reason `cross_entropy` is: those ops have deterministic CUDA kernels, so the
    loss is deterministic by construction, whatever torch's own loss functions dispatch to in a given
    version (F.binary_cross_entropy_with_logits gives the same values, tested). softplus is exact enough
    both ways: it returns z itself above 20, where log(1 + e^z) - z < 3e-9.
    """
    z = logits.float()
    y = labels.to(z.dtype)
    if smoothing:
        y = y * (1.0 - smoothing) + smoothing / 2
    return (F.softplus(z) - y * z).mean()


def criterion(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """The training and test loss of the labels' kind: `binary_cross_entropy` for (N, K) multi-label
    0/1 labels (`data.Dataset.multilabel`), else `cross_entropy` over class indices (N,)."""
    return (binary_cross_entropy if labels.dim() == 2 else cross_entropy)(logits, labels, smoothing)


def predict(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Predictions from logits: per output `logit > 0` (sigmoid > 1/2) as int64 (N, K) for a multi-label
    head, else the argmax class (N,). Accuracy against labels of the same shape is then the mean over
    cells: over (example, attribute) pairs for a multi-label head."""
    return (logits > 0).long() if multilabel else logits.argmax(1)


@torch.no_grad()
def evaluate(model, x_uint8, y, normalization, batch_size, precision, device):
    """Logits for a whole split in fixed-size batches (a sample's result depends on its batch)."""
    model.eval()
    outs = []
    if stream.is_stream(x_uint8):  # a streamed split (imagenet_stream): its evaluation view, in file order
        batches = x_uint8.batches(batch_size)
    else:
        batches = (x_uint8[i : i + batch_size] for i in range(0, len(x_uint8), batch_size))
    for xb in batches:
        with noise.autocast(device, precision):
            outs.append(model(data_mod.to_float(xb, normalization)).float())
    logits = torch.cat(outs)
    loss = float(criterion(logits, y))
    return logits, loss


class KerasSGD(torch.optim.Optimizer):
    """SGD with momentum as Keras applies it (TF 2's `tf.keras.optimizers.SGD`, the paper's ResNet-50):
    v <- m * v - lr * g, then w <- w + v, or with Nesterov w <- w + m * v - lr * g; without momentum
    w <- w - lr * g.

    Not torch.optim.SGD: torch keeps b <- m * b + g and steps w <- w - lr * b, which is the same only
    while lr is constant. Whenever lr changes (every warm-up step, each milestone) torch applies the new
    lr to the whole history, Keras' velocity keeps the steps already taken at their old lr.
    Elementwise ops only: deterministic on every device. The velocity is the optimiser state
    ("velocity"), saved and resumed with it.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not m:
                    p.add_(p.grad, alpha=-lr)
                    continue
                v = self.state[p].setdefault("velocity", torch.zeros_like(p))
                v.mul_(m).add_(p.grad, alpha=-lr)
                if group["nesterov"]:
                    p.add_(v, alpha=m).add_(p.grad, alpha=-lr)
                else:
                    p.add_(v)


def make_optimizer(spec: ReplicaSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The spec's optimiser: Adam with the spec's lr and eps (Keras' 1e-7), fused where torch has a
    fused kernel (CPU, CUDA), or SGD with Keras' momentum (`KerasSGD`).

    Fused: one elementwise kernel per parameter instead of ~10 small ops each, 15 % faster per
    SmallCNN step on the CPU, and as deterministic (no reductions across threads).
    `build_replica` builds every replica's optimizer here (train_replica's and locate's alike), after
    the model: a model built by `models.build_model` with another init scheme than the spec's is refused.
    """
    scheme = getattr(model, "init_scheme", spec.init)  # locate's toy models carry none
    if scheme != spec.init:
        raise ValueError(
            f"the model was initialised with {scheme!r} but the spec asks for init={spec.init!r}: "
            "build it with models.build_model(..., init=spec.init)"
        )
    if spec.optimizer == "sgd":
        return KerasSGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    fused = torch.device(spec.device).type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=spec.lr, eps=spec.adam_eps, fused=fused or None)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- checkpoints
# A checkpoint file is this header line, the SHA-256 of the payload in hex, a newline, then the
# payload: torch.save's bytes. The checksum finds a truncated or flipped file before torch reads it.
CHECKPOINT = "checkpoint.pt"
_CHECKPOINT_MAGIC = b"nnrandomness-checkpoint-1 "


class CorruptCheckpoint(ValueError):
    """A checkpoint that fails its checksum or does not load (truncated, flipped, another format)."""


def save_checkpoint(state: dict, path: Path, kept: str) -> None:
    """Write `state` to `path` atomically: checksummed bytes to ``<path>.tmp-<pid>``, fsync, rename.

    torch.save writes into memory, and the bytes are written here, so that a full disk raises our
    OSError (ENOSPC) naming the path and what is `kept`, not torch's "unexpected pos". The
    temporary file is removed on every way out.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = _CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    write_atomic(path, header + payload, kept)


def load_checkpoint(path: Path) -> dict:
    """The state saved by `save_checkpoint`, loaded with ``weights_only=True`` (tensors, numbers,
    strings and containers only: a checkpoint cannot run code). Raises CorruptCheckpoint."""
    raw = Path(path).read_bytes()
    header, _, payload = raw.partition(b"\n")
    if not header.startswith(_CHECKPOINT_MAGIC):
        raise CorruptCheckpoint("not a checksummed checkpoint (no header)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(_CHECKPOINT_MAGIC) :]:
        raise CorruptCheckpoint(f"fails its SHA-256 checksum ({len(raw)} bytes: truncated or damaged)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # the checksum held, so this is a payload torch cannot read: still corrupt
        raise CorruptCheckpoint(f"torch cannot load it: {type(e).__name__}: {e}") from None


def _set_aside(path: Path, reason: str) -> Path:
    """Move a corrupt checkpoint to ``<path>.corrupt-<n>`` (first free n) and warn with its path."""
    n = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, aside)
    warnings.warn(
        f"checkpoint {path} is corrupt ({reason}); moved to {aside.name}, the replica restarts from epoch 0",
        RuntimeWarning,
        stacklevel=3,
    )
    return aside


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (a writer of a temporary file, a runner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def sweep_checkpoint_temporaries(path: Path) -> list[Path]:
    """Remove ``<path>.tmp-<pid>`` files whose writer is dead (a killed run's leftovers); the removed."""
    removed = []
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _resume(path: Path, spec: ReplicaSpec, replica: Replica) -> dict | None:
    """Load the replica's checkpoint into `replica`; its state, or None (no checkpoint, or a
    corrupt one, set aside: the replica then starts from scratch, which gives the same bits)."""
    sweep_checkpoint_temporaries(path)
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except CorruptCheckpoint as e:
        _set_aside(path, str(e))
        return None
    if ckpt["spec"] != spec.to_dict():
        raise ValueError(f"checkpoint {path} belongs to another spec; delete it to start over")
    replica.model.load_state_dict(ckpt["model"])
    replica.opt.load_state_dict(ckpt["optimizer"])
    for name, state in ckpt["generators"].items():
        replica.gens[name].set_state(state)
    return ckpt


# ----------------------------------------------------------------------------- one replica, one step
@dataclass
class Replica:
    """A replica in training: its generators, model and optimiser, as `build_replica` made them."""

    spec: ReplicaSpec
    seeds: dict[str, int]  # per-source seeds (noise.replica_seeds)
    gens: dict[str, torch.Generator]  # one generator per stream (noise.make_generators)
    model: torch.nn.Module  # on the spec's device, its dropout drawing from gens["dropout"]
    opt: torch.optim.Optimizer
    perturbation: dict | None  # where the ULP poke moved a weight; None when the setting has no poke

    @property
    def device(self) -> torch.device:
        return torch.device(self.spec.device)


class Step(NamedTuple):
    """What one training step computed, for the caller's per-epoch bookkeeping."""

    loss: torch.Tensor  # detached scalar, weight decay included
    # (batch, classes), not detached: its graph is freed by backward, and a detach would add an op to
    # every step that locate traces (train_replica argmaxes an epoch's logits at once, under no_grad).
    logits: torch.Tensor
    labels: torch.Tensor  # (batch,)


def build_replica(
    spec: ReplicaSpec, dataset: data_mod.Dataset, *, model_factory: models.ModelFactory | None = None
) -> Replica:
    """A replica's pieces, in the order that fixes their bits.

    Generators from the spec's seeds; the model initialised on the CPU from the *init* stream (by
    `models.build_model`, or `model_factory(num_classes, in_channels, init generator)`: locate's
    toy models); one weight moved by one ULP where the setting says so; then the move to the
    device, the *dropout* stream and the optimiser. Call it inside
    `noise.configure_determinism(spec.backend())`: the backend flags hold from the first draw.
    """
    seeds = noise.replica_seeds(spec.base_seed, spec.replica, spec.noise)
    device = torch.device(spec.device)
    gens = noise.make_generators(seeds, device)
    if model_factory is None:
        model = models.build_model(
            spec.model,
            dataset.num_classes,
            dataset.in_channels,
            generator=gens["init"],
            dropout=spec.dropout,
            init=spec.init,
        )
    else:
        model = model_factory(dataset.num_classes, dataset.in_channels, gens["init"])
    perturbation = noise.perturb_one_ulp(model, gens["perturb"]) if spec.noise.perturb_ulp else None
    model.to(device)
    models.set_dropout_generator(model, gens["dropout"])
    return Replica(spec, seeds, gens, model, make_optimizer(spec, model), perturbation)


def start_epoch(replica: Replica, dataset: data_mod.Dataset, epoch: int) -> torch.Tensor:
    """Begin epoch `epoch` (0-based): its learning rate, training mode, and its example order,
    drawn from the *order* stream. Returns the order; batch b is order[b * batch_size:][:batch_size]."""
    for group in replica.opt.param_groups:
        group["lr"] = lr_at(replica.spec, epoch)
    replica.model.train()
    g = replica.gens["order"]
    return torch.randperm(len(dataset.y_train), generator=g, device=g.device).to(replica.device)


def _warm_up(replica: Replica, examples: int) -> None:
    """Set the learning rate of the next step while the spec warms up (`lr_at`, per step).

    The steps taken so far are counted in the optimiser's first parameter group ("warmup_step"), which
    checkpoints save and resume with the optimiser. The first step after the warm-up gets the full rate
    too (as `start_epoch` gives it at the epoch's start); after that `start_epoch`'s rate holds.
    """
    steps = math.ceil(examples / replica.spec.batch_size)
    s = replica.opt.param_groups[0].get("warmup_step", 0)
    if s <= replica.spec.warmup_epochs * steps:
        for group in replica.opt.param_groups:
            group["lr"] = lr_at(replica.spec, s // steps, s % steps, steps)
    replica.opt.param_groups[0]["warmup_step"] = s + 1


def _unwatched(phase: str) -> None:
    """train_step's default `phase` callback: nobody watches the step."""


def train_step(
    replica: Replica,
    dataset: data_mod.Dataset,
    idx: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    phase: Callable[[str], None] = _unwatched,
) -> Step:
    """One optimiser step on the training examples `idx`: the one step of the project. `idx` indexes the
    dataset's tensors, or is a ready (uint8 x, y) batch of a streamed dataset (`stream.ImageStream.epoch`),
    already augmented.

    The learning rate of a warm-up step (`lr_at`), augmentation from the *aug* stream (when the
    spec augments; after per-image standardisation, before x/255: `data.training_inputs`), the
    forward pass under the precision's autocast, the loss (`criterion`, label-smoothed by the spec) plus
    weight decay (wd * ||w||^2 over weights with ndim > 1: Keras' l2 on conv and dense kernels, whose
    gradient is 2 * wd * w; biases and BatchNorm are not decayed), backward, the optimiser. `phase` is
    told, in order, "data", "forward", "loss", "backward", "optimizer" just before each part runs
    (locate attributes the ops it traces to them).
    Call inside `noise.configure_determinism(replica.spec.backend())`.
    """
    spec, model = replica.spec, replica.model
    if spec.warmup_epochs:
        _warm_up(replica, len(dataset.y_train))
    phase("data")
    if (
        (spec.normalization and spec.normalization != dataset.normalization)
        or (spec.image_size and spec.image_size != dataset.image_size)
        or (spec.target and spec.target != dataset.info.get("target"))
    ):
        raise ValueError(
            f"the dataset holds {dataset.normalization!r} inputs of side {dataset.image_size} (target "
            f"{dataset.info.get('target')!r}) but the spec asks for normalization={spec.normalization!r}, "
            f"image_size={spec.image_size}, target={spec.target!r} (0, '': the dataset's own): "
            "load it with data.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())"
        )
    if isinstance(idx, tuple):  # a ready (x, y) batch of a stream, cropped and flipped by its workers
        (xb, yb), aug = idx, None
    else:
        xb, yb = dataset.x_train[idx], dataset.y_train[idx]
        aug = replica.gens["aug"] if spec.augment else None
    # Converted before autocast, in the "data" phase: autocast's bf16 op lists hold no elementwise
    # op, so the bits equal those of a conversion inside it (as train_replica's loop once did).
    xf = data_mod.training_inputs(xb, dataset.normalization, dataset.augment_pad, dataset.augment_flip, aug)
    phase("forward")
    with noise.autocast(replica.device, spec.precision):
        logits = model(xf)
    phase("loss")
    loss = criterion(logits, yb, spec.label_smoothing)
    if spec.weight_decay:
        loss = loss + spec.weight_decay * sum((p.float() ** 2).sum() for p in model.parameters() if p.ndim > 1)
    replica.opt.zero_grad(set_to_none=True)
    phase("backward")
    loss.backward()
    phase("optimizer")
    replica.opt.step()
    return Step(loss.detach(), logits, yb)


# ----------------------------------------------------------------------------- the loop
def train_replica(
    spec: ReplicaSpec,
    dataset: data_mod.Dataset | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    kernels: KernelRecorder | None = None,
) -> ReplicaResult:
    """Train one replica and return its result.

    dataset: a preloaded `Dataset` (saves reloading it per replica); loaded from spec if None.
    checkpoint_dir: where epoch-end checkpoints go; an existing checkpoint for the same spec
        is resumed from. The checkpoint is left in place (the store removes it once the
        replica is written).
    progress: show a tqdm bar over epochs.
    kernels: records the kernels (CUDA) or ops (CPU) of a few of the first steps this call trains
        (`KernelRecorder`: the caller reads them once this returns); it observes, changing no bits.
    """
    validate_spec(spec, check_data=dataset is None)
    device = torch.device(spec.device)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None

    with noise.configure_determinism(spec.backend()) as backend:
        # A no-op for data already there (cell.run_cell moves a dataset once per process, not per replica).
        ds = (dataset or data_mod.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())).to(device)
        replica = build_replica(spec, ds)
        model, opt, gens = replica.model, replica.opt, replica.gens

        start_epoch_index, rows, resumed_from, train_seconds = 0, [], None, 0.0
        snapshots: dict[int, torch.Tensor] = {}  # epoch -> test predictions (int64, CPU)
        if ckpt_path is not None and (ckpt := _resume(ckpt_path, spec, replica)) is not None:
            start_epoch_index, rows, resumed_from = ckpt["epoch"], ckpt["history"], ckpt["epoch"]
            train_seconds, snapshots = ckpt["train_seconds"], dict(ckpt.get("snapshots", {}))

        n = len(ds.y_train)
        epochs = range(start_epoch_index, spec.epochs)
        if progress:
            # Text bars: tqdm.auto in a kernel without ipywidgets prints a TqdmWarning holding the
            # venv's absolute path into every executed notebook.
            from tqdm import tqdm

            epochs = tqdm(
                epochs, desc=f"{spec.setting} replica {spec.replica}", initial=start_epoch_index, total=spec.epochs
            )
        steps_here = 0  # steps trained by this call (a resumed replica counts from its resumption)
        for epoch in epochs:
            _sync(device)
            t0 = time.perf_counter()
            order = start_epoch(replica, ds, epoch)
            # Kept on the device and reduced once per epoch: a .item() per step would synchronise every
            # step, and even one small op per step (an argmax) costs an MLP's ~1 ms step a few per cent.
            losses, logits = [], []
            # --- streaming (imagenet_stream): the stream yields the epoch's (x, y) batches of `order`, its crops
            # and flips drawn from the aug stream; else the batches are index slices of the data in memory.
            if stream.is_stream(ds.x_train):
                batches = ds.x_train.epoch(order, spec.batch_size, gens["aug"] if spec.augment else None)
            else:
                batches = (order[i : i + spec.batch_size] for i in range(0, n, spec.batch_size))
            # --- end streaming
            for batch in batches:
                if kernels is not None:
                    kernels.before_step(steps_here)
                step = train_step(replica, ds, batch)
                if kernels is not None:
                    kernels.after_step(steps_here)
                steps_here += 1
                losses.append(step.loss)
                logits.append(step.logits)
            with torch.no_grad():  # the logits still carry their (freed) graphs: no new one for the bookkeeping
                sizes = torch.tensor([min(spec.batch_size, n - i) for i in range(0, n, spec.batch_size)], device=device)
                loss_sum = (torch.stack(losses) * sizes).sum()
                correct = (predict(torch.cat(logits), ds.multilabel) == ds.y_train[order]).sum()
            del logits
            _sync(device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            # The test evaluation draws nothing, so skipping it (test_every_epoch false: a third of a small
            # replica's time) leaves the training bits alone; its history row then holds NaN test metrics.
            tested = spec.test_every_epoch or epoch + 1 in spec.snapshot_epochs or epoch + 1 == spec.epochs
            if tested:
                t0 = time.perf_counter()
                test_logits, test_loss = evaluate(
                    model, ds.x_test, ds.y_test, ds.normalization, spec.eval_batch_size, spec.precision, device
                )
                eval_seconds = time.perf_counter() - t0
            rows.append(
                {
                    "epoch": epoch + 1,
                    "lr": lr_at(spec, epoch),
                    "train_loss": float(loss_sum) / n,
                    "train_accuracy": int(correct) / ds.y_train.numel(),  # n, or n x K cells
                    "test_loss": test_loss if tested else math.nan,
                    "test_accuracy": float((predict(test_logits, ds.multilabel) == ds.y_test).float().mean())
                    if tested
                    else math.nan,
                    "seconds": epoch_seconds,
                }
            )
            if epoch + 1 in spec.snapshot_epochs:  # the evaluation above ran anyway: a snapshot draws nothing
                snapshots[epoch + 1] = predict(test_logits, ds.multilabel).cpu()
            if ckpt_path is not None:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                state = {
                    "spec": spec.to_dict(),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generators": {k: g.get_state() for k, g in gens.items()},
                    "history": rows,
                    "train_seconds": train_seconds,
                }
                if spec.snapshot_epochs:  # only then: a run without snapshots keeps its checkpoint's keys
                    state["snapshots"] = snapshots
                kept = f"the checkpoint after epoch {epoch}" if epoch else "nothing (this was the first checkpoint)"
                save_checkpoint(state, ckpt_path, kept)

        if kernels is not None:  # a window still open (fewer steps than it records): closed before the evaluation
            kernels.close()
        if start_epoch_index < spec.epochs:
            logits = test_logits  # the last epoch's test evaluation: the same model, so the same bits
        else:  # resumed from the last epoch's checkpoint: nothing was trained or evaluated in this call
            t0 = time.perf_counter()
            logits, _ = evaluate(
                model, ds.x_test, ds.y_test, ds.normalization, spec.eval_batch_size, spec.precision, device
            )
            eval_seconds = time.perf_counter() - t0
        probabilities = torch.sigmoid(logits) if ds.multilabel else torch.softmax(logits, 1)
        t0 = time.perf_counter()
        extra_tests = evaluate_extra_tests(model, ds, spec, progress)
        extra_seconds = time.perf_counter() - t0
        env = environment.fingerprint(device)

    return ReplicaResult(
        spec=spec,
        seeds=replica.seeds,
        history=pd.DataFrame(rows),
        predictions=predict(logits, ds.multilabel).cpu().numpy(),
        probabilities=probabilities.cpu().numpy().astype(np.float32) if spec.keep_probabilities else None,
        labels=ds.y_test.cpu().numpy(),
        groups=None if ds.g_test is None else ds.g_test.cpu().numpy(),
        weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        backend=backend,
        environment=env,
        perturbation=replica.perturbation,
        timings={
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "extra_eval_seconds": extra_seconds if extra_tests else None,
            "examples_per_second": n * spec.epochs / train_seconds if train_seconds else None,
        },
        resumed_from_epoch=resumed_from,
        snapshots={e: p.numpy() for e, p in sorted(snapshots.items())},
        extra_tests=extra_tests,
        label_names=list(ds.classes) if ds.multilabel else None,
    )


def evaluate_extra_tests(model, ds: data_mod.Dataset, spec: ReplicaSpec, progress: bool = False) -> dict | None:
    """Accuracy of `model` on each of the dataset's extra test sets (same eval batch size and precision as
    the main test set): {"seeds": [...], "n": [...], "accuracy": [...]}, or None when it has none.
    The sets are made on first use (`data.ExtraTests`), with a bar when `progress`."""
    if not ds.extra_tests or not spec.extra_tests:
        return None
    ds.extra_tests.load(progress=progress)
    out = {"seeds": [], "n": [], "accuracy": []}
    for seed, x, y in ds.extra_tests:
        x, y = x.to(spec.device), y.to(spec.device)
        logits, _ = evaluate(model, x, y, ds.normalization, spec.eval_batch_size, spec.precision, spec.device)
        out["seeds"].append(int(seed))
        out["n"].append(len(y))
        out["accuracy"].append(float((logits.argmax(1) == y).float().mean()))
    return out


# ----------------------------------------------------------------------------- which kernels ran
PROFILE_WARMUP_STEPS = 1  # steps before the window: with cudnn.benchmark, the first step tries every candidate kernel
PROFILE_STEPS = 3  # steps recorded: the kernels a replica chose, at a cost of a few steps, not of the whole replica


class KernelRecorder:
    """The names of what a few training steps ran, for the manifest (`result`): on CUDA the GPU
    kernels, from `torch.profiler` (CUPTI), which name the algorithm cuDNN and cuBLAS chose (two
    IMPL replicas that autotuned differently show different names); elsewhere the aten ops, from a
    dispatch mode (torch.profiler would cost ~2 s per process to start on the CPU, and its op
    names would say nothing about a choice of kernel). `train_replica` calls `before_step` and
    `after_step` with its step count: steps PROFILE_WARMUP_STEPS .. + PROFILE_STEPS - 1 are
    recorded. Observing changes no bits (the same kernels run, in the same order)."""

    def __init__(self, device, warmup: int = PROFILE_WARMUP_STEPS, steps: int = PROFILE_STEPS):
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0 (steps before the window), got {warmup!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (steps recorded), got {steps!r}")
        self.device = torch.device(device)
        self.kind = "cuda-kernels" if self.device.type == "cuda" else "ops"
        self.warmup, self.steps = warmup, steps
        self.names: set[str] = set()
        self.recorded = 0  # steps recorded so far
        self.seconds = 0.0  # wall time of the window: the recorded steps and the recorder's own work
        self._active = None  # the running profiler or dispatch mode
        self._started = 0.0

    def before_step(self, step: int) -> None:
        if step == self.warmup and self._active is None and not self.recorded:
            self._started = time.perf_counter()
            self._active = self._start()

    def after_step(self, step: int) -> None:
        if self._active is not None:
            self.recorded += 1
            if self.recorded >= self.steps:
                self.close()

    def close(self) -> None:
        """End the window (idempotent); what it saw goes to `names`."""
        if self._active is None:
            return
        active, self._active = self._active, None
        if self.kind == "cuda-kernels":
            _sync(self.device)  # every recorded kernel has run before the profiler stops
            with _quiet_stderr():
                active.stop()
                self.names |= _kernel_names(active)
        else:
            active.__exit__(None, None, None)
        self.seconds += time.perf_counter() - self._started

    def _start(self):
        if self.kind == "cuda-kernels":
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            with _quiet_stderr():
                prof.start()
            return prof
        mode = _op_recorder(self.names)
        mode.__enter__()
        return mode

    def result(self) -> dict | None:
        """{"kind", "names" (sorted, distinct), "hash" (SHA-256 of the names, one a line), "steps", "seconds"},
        or None when no step was recorded (a replica resumed after its last step, or one of a single step)."""
        self.close()
        if not self.recorded:
            return None
        names = sorted(self.names)
        return {
            "kind": self.kind,
            "names": names,
            "hash": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "steps": self.recorded,
            "seconds": self.seconds,
        }


def _op_recorder(names: set[str]):
    """A dispatch mode that adds the name of every aten op it sees (forward and backward) to `names`
    and runs the op unchanged."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpNames(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(func.name())
            return func(*args, **(kwargs or {}))

    return OpNames()


def _kernel_names(prof) -> set[str]:
    """The GPU kernels (and memcpy/memset activities) a stopped torch.profiler recorded."""
    from torch.autograd import DeviceType

    names = set()
    for event in prof.events():
        if getattr(event, "device_type", None) == DeviceType.CUDA:
            names.add(event.name)
        names.update(k.name for k in getattr(event, "kernels", None) or ())
    return names


def _quiet_stderr():
    """Kineto writes its progress (USDT, STAGE lines) to file descriptor 2 itself, not through Python;
    a kernel (ipykernel) copies that descriptor into the executed notebook. Silenced while the profiler
    starts and stops; Python's own errors go through sys.stderr, untouched."""
    import contextlib
    import sys

    @contextlib.contextmanager
    def quiet():
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    return quiet()
