"""The training notebook's parameters: the one definition of their names, types, defaults and checks.

`notebooks/10_training` assigns exactly these names in its cell tagged `parameters`, one per line,
each with `help` as its comment (a test compares them, and papermill's `--help-notebook` prints
them). Everything that handles the notebook's parameters reads this module:

* the plan expander (`plan`) takes the recipe's defaults (`RECIPE_DEFAULTS`), judges every value a
  plan writes with `value_error` / `name_error` (naming the key where it was written), each job's
  setting against its recipe with `setting_error`, and derives the hardware label with `hardware`;
* the notebook reads and checks its values with `from_namespace` (`check_parameters`), which also
  refuses names that are no parameter (papermill only warns when it injects one) and reports what
  this machine lacks; it derives its hardware label with `hardware` too;
* `train.ReplicaSpec` takes its recipe defaults from here, is built from the parameters by
  `ReplicaSpec.from_parameters` (the notebook's and the runner's one mapping), and
  `train.validate_spec` judges the spec's fields with these same rules.

The spec is built in `train`, not here: this module stands below `train` and knows nothing of the
spec class; the fields are named like the parameters, so the mapping holds no list of its own.
Each rule is written once, here, except the precision's: it lives with the backend
(`noise.precision_error`), which must refuse an unknown precision too, and the rule of a name
that becomes a path component, which lives with the store (`store.path_component_error`), which
must refuse such a name too. Counts have named upper bounds (`MAX_REPLICAS`, ...), and every
message quotes at most a bounded prefix of a value (`quote`).
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from . import data, environment, models, noise, store


@dataclass(frozen=True)
class Parameter:
    """One parameter of the training notebook."""

    name: str
    types: tuple[type, ...]  # accepted types (bool is never an integer here)
    help: str  # meaning and units: the parameters cell's comment on this name's line, word for word
    # What a plan that leaves the key out gets: the paper's SmallCNN recipe, never the notebook's
    # tiny preset. None: every plan gives it (the axes, replicas, output_root).
    default: object = None
    check: Callable[[object], str | None] | None = None  # the value's own rule, once its type is right


# ----------------------------------------------------------------------------- upper bounds
# Generous limits on what one plan or one notebook run may ask for: beyond them a typo
# (replicas: 100000000) would make the runner's --dry-run walk the store for hours.
MAX_REPLICAS = 10_000  # replicas per setting
MAX_EPOCHS = 100_000  # training epochs
MAX_JOBS = 10_000  # jobs of one plan (hardware x dataset x model x setting)
MAX_PLAN_REPLICAS = 1_000_000  # replicas of one plan, all jobs together (what --dry-run looks up)
MAX_IMAGE_SIZE = 4096  # input side in pixels (a typo such as 12800 would fill the host's memory)

OPTIMIZERS = ("adam", "sgd")  # train.make_optimizer builds them


# ----------------------------------------------------------------------------- quoting a value
QUOTE_LIMIT = 80  # characters of a value that a message quotes
_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 10
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = QUOTE_LIMIT


def quote(value) -> str:
    """`value`'s repr for a message, at most QUOTE_LIMIT characters (then "..."): every message that
    quotes a value from a plan or the notebook's parameters goes through here. reprlib looks at a
    bounded part of a nested value, so quoting a huge one (a YAML alias bomb) costs nothing."""
    try:  # a string's own prefix (reprlib would keep its head and tail)
        text = repr(value[: QUOTE_LIMIT + 1]) if isinstance(value, str) else _REPR.repr(value)
    except ValueError:  # an int over Python's 4300-digit str limit
        text = f"<{type(value).__name__} too long to print>"
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "..."


# ----------------------------------------------------------------------------- the rules of one value
def integer_error(value, minimum: int, maximum: int | None = None, limit: str = "") -> str | None:
    """Why `value` is not an integer >= minimum (and <= maximum, the constant named `limit`); None
    when it is. bool is no integer here."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"must be an integer >= {minimum}, got {quote(value)}"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum} (params.{limit}), got {quote(value)}"
    return None


def _integer(minimum: int, maximum: int | None = None, limit: str = "") -> Callable[[object], str | None]:
    # A float such as 2.5 is judged by this rule, not by the type check: the message names the range.
    return lambda value: integer_error(value, minimum, maximum, limit)


def path_component_error(value) -> str | None:
    """Why `value` cannot name a directory of the run store or of the executed notebooks (None when it
    can): the store's one rule (`store.path_component_error`: no empty string, "." or "..", no "/"
    or "\\", no NUL or other control character), for the hardware label, dataset, model and setting."""
    return store.path_component_error(value)


# What the name parameters name, by kind: dataset, model, setting.
REGISTRIES: dict[str, Mapping] = {"dataset": data.LOADERS, "model": models.MODELS, "setting": noise.SETTINGS}


def name_error(what: str, value) -> str | None:
    """Why `value` is not the name of a registered `what` (dataset, model, setting); None when it is."""
    if not isinstance(value, str):
        return f"must be a {what} name (a string), got {quote(value)}"
    if e := path_component_error(value):  # every registered name passes: this guards the registries
        return f"{what} name {quote(value)} {e}"
    if value not in REGISTRIES[what]:
        return f"unknown {what} {quote(value)}; valid {what}s: {', '.join(REGISTRIES[what])}"
    return None


def _registered(what: str) -> Callable[[object], str | None]:
    return lambda value: name_error(what, value)


def _positive(value) -> str | None:
    return None if value > 0 else f"must be a positive number, got {quote(value)}"


def _probability(value) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {quote(value)}"


def _milestones(value) -> str | None:
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in value):
        return f"must be a list of positive epoch numbers, got {quote(value)}"
    return None


def _non_negative(value) -> str | None:
    return None if value >= 0 else f"must be a number >= 0, got {quote(value)}"


def _choice(what: str, valid: tuple[str, ...]) -> Callable[[object], str | None]:
    return lambda value: None if value in valid else f"unknown {what} {quote(value)}; valid {what}s: {', '.join(valid)}"


def _normalization(value) -> str | None:
    if value and value not in data.NORMALIZATIONS:
        valid = ", ".join(map(repr, ("", *data.NORMALIZATIONS)))
        return f"unknown normalization {quote(value)}; valid normalizations: {valid} (empty: the dataset's own)"
    return None


def _settings(value) -> str | None:
    if not value:
        return "must name at least one setting"
    return next((e for s in value if (e := name_error("setting", s))), None)


def _precision(value) -> str | None:
    # The rule is the backend's (noise.precision_error); the value it quotes is bounded here.
    e = noise.precision_error(value)
    return e and e.replace(repr(value), quote(value), 1)


def _device(value) -> str | None:
    if environment.device_type(value) not in environment.DEVICE_TYPES:
        return (
            f"unknown device {quote(value)}; valid devices: {', '.join(environment.DEVICE_TYPES)} (optionally ':index')"
        )
    return None


def _cpu_capability(value) -> str | None:
    if value not in environment.CPU_CAPABILITIES:
        return f"unknown cpu_capability {quote(value)}; valid choices: {', '.join(environment.CPU_CAPABILITIES)}"
    return None


def _hardware_label(value) -> str | None:
    """Empty (derived from device and threads), else a path component of letters, digits, . _ + -."""
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", value):
        return f"must be a path-safe label (letters, digits, . _ + -), got {quote(value)}"
    if e := path_component_error(value):
        return f"{e}, got {quote(value)}"
    return None


# ----------------------------------------------------------------------------- the parameters
# In the order of the parameters cell. The help texts hold no "=": papermill's inspector cannot
# parse a line with two of them (it warns "Unable to parse line N" and leaves the name out).
PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter(
            "dataset",
            (str,),
            "a name in data.LOADERS: digits (embedded), digits_groups, cifar10, ...",
            check=_registered("dataset"),
        ),
        Parameter(
            "model", (str,), "a name in models.MODELS: smallcnn, smallcnn_bn, resnet18, ...", check=_registered("model")
        ),
        Parameter("settings", (list,), "noise settings to train, one cell of the study each", check=_settings),
        Parameter(
            "replicas",
            (int,),
            "replicas per setting, indices 0 .. replicas-1",
            check=_integer(1, MAX_REPLICAS, "MAX_REPLICAS"),
        ),
        Parameter("epochs", (int,), "training epochs", 20, _integer(1, MAX_EPOCHS, "MAX_EPOCHS")),
        Parameter("batch_size", (int,), "training examples per step", 128, _integer(1)),
        Parameter("lr", (float, int), "learning rate (after any warm-up)", 4e-4, _positive),  # the paper's
        Parameter(
            "lr_milestones", (list,), "epochs at which the learning rate is multiplied by 0.1", [50, 100], _milestones
        ),
        # --- the paper's recipes (issue 10): every default reproduces the bits of the runs made before them
        Parameter(
            "optimizer",
            (str,),
            "adam (Keras epsilon 1e-7) or sgd (momentum as Keras applies it)",
            "adam",
            _choice("optimizer", OPTIMIZERS),
        ),
        Parameter("momentum", (float, int), "SGD momentum in [0, 1); 0 for adam", 0.0, _probability),
        Parameter("nesterov", (bool,), "Nesterov momentum (SGD with momentum only)", False),
        Parameter(
            "weight_decay",
            (float, int),
            "L2 as Keras l2: wd times the summed squares of conv and dense kernels, added to the loss",
            0.0,
            _non_negative,
        ),
        Parameter(
            "warmup_epochs",
            (int,),
            "epochs of linear learning-rate warm-up from 0, ramped per step (paper's ResNet-50: 5)",
            0,
            _integer(0, MAX_EPOCHS, "MAX_EPOCHS"),
        ),
        Parameter(
            "label_smoothing", (float, int), "label smoothing of the training loss, in [0, 1)", 0.0, _probability
        ),
        Parameter(
            "init",
            (str,),
            "weights from the init stream: glorot_uniform (Keras), he_normal (paper's ResNet-50), torch",
            "glorot_uniform",
            _choice("init", tuple(models.INITS)),
        ),
        Parameter(
            "normalization",
            (str,),
            "inputs: unit (x/255) or standardize (per image, as TF); empty: the dataset's own",
            "",
            _normalization,
        ),
        Parameter(
            "image_size",
            (int,),
            "square input side where the loader resizes (celeba, imagenet); 0: the dataset's own",
            0,
            _integer(0, MAX_IMAGE_SIZE, "MAX_IMAGE_SIZE"),
        ),
        Parameter(
            "target",
            (str,),
            "what the model predicts where the loader offers a choice (celeba: an attribute, or all); empty: its own",
            "",
        ),
        # --- end of the paper's recipes
        Parameter("dropout", (float, int), "dropout probability before the last layer, in [0, 1)", 0.0, _probability),
        Parameter("augment", (bool,), "pad-and-crop augmentation on the device (+ flips for photos)", False),
        Parameter("base_seed", (int,), "root of every per-source seed", 0, _integer(0)),
        Parameter("device", (str,), "torch device: cpu, cuda, cuda:1, ...", "cpu", _device),
        # Pinned to 1 rather than left to torch: the thread count is a tooling factor that changes bits.
        Parameter(
            "threads", (int,), "torch intra-op CPU threads (a tooling factor: it changes CPU bits)", 1, _integer(1)
        ),
        # Per process: the batch runner sets ATEN_CPU_CAPABILITY before the kernel starts; a kernel
        # started by hand must have been started with it (checked with the machine).
        Parameter(
            "cpu_capability",
            (str,),
            "ATen CPU instruction set: default (torch's pick), avx2 or avx512 (a tooling factor)",
            "default",
            _cpu_capability,
        ),
        Parameter("precision", (str,), "fp32, tf32 or bf16", "fp32", _precision),
        Parameter(
            "eval_batch_size",
            (int,),
            "test examples per evaluation batch (fixed: batch composition changes float results)",
            500,
            _integer(1),
        ),
        # --- MNIST-1D testbed (issue 9): prediction snapshots and the store's size
        Parameter(
            "snapshot_epochs",
            (list,),
            "epochs after which the test predictions are also stored (each in 1 .. epochs)",
            [],
            _milestones,
        ),
        Parameter(
            "keep_probabilities",
            (bool,),
            "store the test softmax probabilities (false: predictions only, a much smaller store)",
            True,
        ),
        Parameter(
            "test_every_epoch",
            (bool,),
            "evaluate the test set after every epoch (false: after the snapshots and the last epoch only)",
            True,
        ),
        Parameter(
            "extra_tests",
            (bool,),
            "also evaluate the dataset's extra test sets at the end, if it has any (MNIST-1D: 20 x 10,000)",
            True,
        ),
        # --- end MNIST-1D testbed
        Parameter("data_root", (str,), "root of the real datasets; empty: $NNRANDOMNESS_DATA", ""),
        Parameter("output_root", (str,), "the run store; empty: a fresh temporary directory"),
        Parameter(
            "hardware",
            (str,),
            "hardware label, a path component of the store; empty: derived from device and threads",
            "",
            _hardware_label,
        ),
        # --- process per replica (issue 10): where the tooling is the subject, as the paper ran it
        Parameter(
            "process_per_replica",
            (str,),
            "a fresh process per replica: auto (on CUDA for IMPL and ALGO+IMPL), always or never",
            "auto",
            lambda v: None if v in ("auto", "always", "never") else f"must be auto, always or never, got {quote(v)}",
        ),
    )
}
# A plan's recipe where it leaves keys out (read-only: every job shares it).
RECIPE_DEFAULTS = MappingProxyType({n: p.default for n, p in PARAMETERS.items() if p.default is not None})


def _type_name(types: tuple[type, ...]) -> str:
    if float in types:  # integers are numbers too
        return "a number"
    return {bool: "true/false", int: "an integer", str: "a string", list: "a list"}[types[0]]


def _type_hint(name: str, types: tuple[type, ...], value) -> str:
    """What to write instead, for the text a YAML file or papermill's -p gives where a number or list is due."""
    if not isinstance(value, str):
        return ""
    if float in types:
        return " (YAML reads 2e-3 as a string: write 0.002)"
    if list in types:
        try:  # the text itself where it is a short JSON list
            written = value if len(value) <= QUOTE_LIMIT and isinstance(json.loads(value), list) else "[...]"
        except ValueError:
            written = "[...]"
        return f" (papermill's -p passes text: give a list with -y '{name}: {written}')"
    return ""


def value_error(name: str, value) -> str | None:
    """Why `value` is not a valid value of parameter `name` (None when it is): its type, then its rule.

    A value is judged alone; the recipe as a whole (a setting against the recipe) is `setting_error`'s.
    """
    p = PARAMETERS[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (isinstance(value, bool) and bool not in p.types) or not isinstance(value, p.types):
        if not (number and p.types == (int,)):  # a float for an integer: the rule names the range
            return f"must be {_type_name(p.types)}, got {quote(value)}{_type_hint(name, p.types, value)}"
    if float in p.types and not _finite(value):
        return f"must be a finite number, got {quote(value)}"
    return p.check(value) if p.check else None


def _finite(number) -> bool:
    """A float that is not inf or nan; an int that a float can hold (10**1000 cannot: OverflowError)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def value_errors(values: Mapping) -> list[str]:
    """A message for every parameter in `values` whose value is invalid (other names are ignored).

    "epochs must be ...": the name leads, except where the message names the value itself ("unknown model ...").
    """
    return [
        e if e.startswith("unknown ") else f"{n} {e}"
        for n in PARAMETERS
        if n in values and (e := value_error(n, values[n]))
    ]


def setting_error(setting: str, values: Mapping) -> str | None:
    """Why `setting` cannot run with the recipe `values` (None when it can).

    A single-source preset whose source is switched off in the recipe would silently equal CONTROL.
    """
    varied = noise.SETTINGS[setting].varied
    if varied == {"dropout"} and values["dropout"] == 0:
        return f"setting {setting!r} varies only dropout, but the recipe has dropout=0"
    if varied == {"aug"} and not values["augment"]:
        return f"setting {setting!r} varies only augmentation, but the recipe has augment=False"
    return None


def snapshot_error(snapshot_epochs, epochs: int) -> str | None:
    """Why `snapshot_epochs` (positive epoch numbers, each checked by its own rule) cannot be snapshots
    of a run of `epochs` epochs: an epoch past the last one, or one given twice; None when they can."""
    late = sorted(e for e in snapshot_epochs if e > epochs)
    if late:
        return f"snapshot_epochs must lie in 1 .. epochs ({epochs}), got {quote(late)} past the last epoch"
    if len(set(snapshot_epochs)) != len(snapshot_epochs):
        return f"snapshot_epochs must not repeat an epoch, got {quote(list(snapshot_epochs))}"
    return None


def recipe_errors(values: Mapping) -> list[str]:
    """What makes a recipe impossible as a whole, known before any data is loaded: snapshots past the
    last epoch, a model that cannot take the dataset's inputs (a 2D model on 1D signals), optimiser
    settings that contradict each other, input options the dataset's loader lacks."""
    errors = [e] if (e := snapshot_error(values["snapshot_epochs"], values["epochs"])) else []
    try:
        models.check_input_dims(values["model"], data.input_dims(values["dataset"]))
    except ValueError as e:
        errors.append(f"dataset {values['dataset']!r}: {e}")
    return errors + optimizer_errors(values) + input_errors(values)


def _value(values: Mapping, name: str):
    """A recipe value; its default where a mapping from before the parameter existed lacks it."""
    return values.get(name, PARAMETERS[name].default)


def optimizer_errors(values: Mapping) -> list[str]:
    """The optimiser's settings against each other: momentum and Nesterov are SGD's (Adam would ignore
    them without a word), Nesterov needs momentum, and a warm-up must end within the training."""
    errors = []
    optimizer, momentum, nesterov = (_value(values, n) for n in ("optimizer", "momentum", "nesterov"))
    if optimizer != "sgd" and (momentum or nesterov):
        given = ", ".join(f"{n}={quote(v)}" for n, v in (("momentum", momentum), ("nesterov", nesterov)) if v)
        errors.append(
            f"{given}: momentum and nesterov apply to optimizer 'sgd' only, the recipe's optimizer is "
            f"{quote(optimizer)}; set momentum 0 and nesterov false, or optimizer sgd"
        )
    elif nesterov and not momentum:
        errors.append("nesterov=True needs a momentum > 0, got momentum=0")
    if (warmup := _value(values, "warmup_epochs")) > values["epochs"]:
        errors.append(f"warmup_epochs ({warmup}) must be at most epochs ({values['epochs']})")
    return errors


def input_errors(values: Mapping) -> list[str]:
    """What the dataset's loader cannot give (`data.input_options`): a normalization, resolution or target
    option on a dataset whose loader has none (a target's attribute name is judged by the loader, against
    the dataset's attribute file)."""
    try:
        data.input_options(values["dataset"], *(_value(values, n) for n in ("normalization", "image_size", "target")))
    except ValueError as e:
        return [str(e)]
    return []


# ----------------------------------------------------------------------------- a whole set of values
def check_parameters(values: Mapping, *, unknown=(), check_machine: bool = True) -> None:
    """Raise ValueError naming every problem with a whole set of the notebook's parameters.

    values: parameter name -> value, all of `PARAMETERS`. unknown: other names the caller found.
    check_machine: also check what this machine must have (the dataset's files, the device) and warn
    when threads exceed its CPU cores; off to judge values meant for another machine.
    """
    errors = []
    if unknown:
        errors.append(
            f"unknown parameter {', '.join(map(quote, sorted(unknown)))}: papermill injected it or a "
            "parameter is misspelt (a name of your own that holds plain data: start it with _); "
            f"valid parameters: {', '.join(PARAMETERS)}"
        )
    errors += [f"missing parameter {n!r} ({p.help})" for n, p in PARAMETERS.items() if n not in values]
    errors += [
        f"unknown parameter {quote(n)}; valid parameters: {', '.join(PARAMETERS)}"
        for n in values
        if n not in PARAMETERS
    ]
    errors += value_errors(values)
    if not errors:
        errors += [e for s in values["settings"] if (e := setting_error(s, values))] + recipe_errors(values)
    if not errors and check_machine:
        errors += _machine_errors(values)
    if errors:
        raise ValueError("invalid notebook parameters:\n  " + "\n  ".join(errors))


def _machine_errors(values: Mapping) -> list[str]:
    """What this machine lacks for `values` (valid ones); a warning where threads exceed its cores."""
    errors = []
    try:
        data.check_dataset(values["dataset"], values["data_root"] or None)
    except (FileNotFoundError, ValueError) as e:
        errors.append(str(e))
    device = torch.device(values["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        errors.append(
            f"device {quote(values['device'])}: this machine has no CUDA device (torch.cuda.is_available() is "
            'False); use device "cpu" or run on a GPU host'
        )
    elif device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        errors.append(f"device {quote(values['device'])}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        errors.append(f"device {quote(values['device'])}: this machine has no MPS device")
    if e := environment.cpu_capability_error(values["cpu_capability"]):
        errors.append(e)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if values["threads"] > cores:
        # A warning, not an error: legal and reproducible, only slow (2 busy cores at 4 threads ran 3.4x slower).
        warnings.warn(
            f"threads={values['threads']} is more than the {cores} CPU cores this process may use: "
            "training will be much slower (the results stay valid for the hardware label)",
            stacklevel=3,
        )
    return errors


def from_namespace(namespace: Mapping, *, check_machine: bool = True) -> Mapping:
    """The parameters' values read from the notebook's namespace (`globals()`), checked; read-only.

    Other names are refused as unknown parameters by `unknown_names`'s rule: papermill only warns
    when it injects `-p epoch 5`.
    """
    values = {n: namespace[n] for n in PARAMETERS if n in namespace}
    check_parameters(values, unknown=unknown_names(namespace, PARAMETERS), check_machine=check_machine)
    return MappingProxyType(values)


def unknown_names(namespace: Mapping, parameters) -> set[str]:
    """The public names of a notebook's `namespace` that hold plain data and are not `parameters`.

    Plain data is what a parameter line or papermill can assign: text, numbers, true/false, None,
    lists and dicts of them. A notebook's later cells bind other objects (frames, specs, modules),
    so that its check passes again when re-run after "Run all"; IPython's history (In, Out) is no
    parameter either.
    """
    return {
        name
        for name, value in namespace.items()
        if not name.startswith("_") and name not in parameters and name not in _IPYTHON_NAMES and _plain(value)
    }


# IPython's own names in a kernel's namespace: its input and output history.
_IPYTHON_NAMES = {"In", "Out"}


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def hardware(values: Mapping) -> str:
    """The run's hardware label: the one given, else derived from device, threads and CPU capability
    (`environment.hardware_label`: 'cpu-2t', 'cpu-2t-avx2').

    Raises ValueError for a CUDA device on a machine without CUDA: the label names the GPU model,
    which only a machine with the GPU can read.
    """
    if values["hardware"]:
        return values["hardware"]
    if environment.device_type(values["device"]) == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"cannot derive the hardware label of device {quote(values['device'])} on a machine without "
            "CUDA; run on the GPU host or give the hardware label"
        )
    # A mapping from before the parameter existed means its default: torch's own pick, label unchanged.
    capability = values.get("cpu_capability", PARAMETERS["cpu_capability"].default)
    return environment.hardware_label(values["device"], values["threads"], capability)
