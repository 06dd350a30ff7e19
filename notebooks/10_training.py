# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# (training)=
# # Training replicas
#
# Every result in this book comes from *replicas*: copies of one training recipe that differ only
# in what a **noise setting** lets vary. This chapter trains the replicas of one dataset and model
# under a few settings, stores them, and looks at them before the analysis chapters do.
#
# It is also the notebook that the batch runner executes with
# [papermill](https://papermill.readthedocs.io) once per hardware x dataset x model x setting of a
# plan (`nnrandomness run plans/default.yaml`), with the parameters below replaced. As committed,
# it runs a tiny preset on the CPU in seconds and writes into a fresh temporary directory, never
# into the book's data: change the parameters and run it again.

# %%
import tempfile

import pandas as pd

import nnrandomness as nr
from nnrandomness import charts, params

charts.enable()  # offline charts with stable ids (the book serves Vega itself)

# %% [markdown]
# ## Parameters
#
# One value per line; papermill replaces this cell's values when a plan runs the notebook.

# %% tags=["parameters"]
dataset = "digits"  # a name in data.LOADERS: digits (embedded), digits_groups, cifar10, ...
model = "smallcnn"  # a name in models.MODELS: smallcnn, smallcnn_bn, resnet18, ...
settings = ["CONTROL", "ALGO"]  # noise settings to train, one cell of the study each
replicas = 3  # replicas per setting, indices 0 .. replicas-1
epochs = 5  # training epochs
batch_size = 64  # training examples per step
lr = 0.004  # learning rate (after any warm-up)
lr_milestones = [4]  # epochs at which the learning rate is multiplied by 0.1
optimizer = "adam"  # adam (Keras epsilon 1e-7) or sgd (momentum as Keras applies it)
momentum = 0.0  # SGD momentum in [0, 1); 0 for adam
nesterov = False  # Nesterov momentum (SGD with momentum only)
weight_decay = 0.0  # L2 as Keras l2: wd times the summed squares of conv and dense kernels, added to the loss
warmup_epochs = 0  # epochs of linear learning-rate warm-up from 0, ramped per step (paper's ResNet-50: 5)
label_smoothing = 0.0  # label smoothing of the training loss, in [0, 1)
init = "glorot_uniform"  # weights from the init stream: glorot_uniform (Keras), he_normal (paper's ResNet-50), torch
normalization = ""  # inputs: unit (x/255) or standardize (per image, as TF); empty: the dataset's own
image_size = 0  # square input side where the loader resizes (celeba, imagenet); 0: the dataset's own
target = ""  # what the model predicts where the loader offers a choice (celeba: an attribute, or all); empty: its own
dropout = 0.1  # dropout probability before the last layer, in [0, 1)
augment = True  # pad-and-crop augmentation on the device (+ flips for photos)
base_seed = 0  # root of every per-source seed
device = "cpu"  # torch device: cpu, cuda, cuda:1, ...
threads = 1  # torch intra-op CPU threads (a tooling factor: it changes CPU bits)
cpu_capability = "default"  # ATen CPU instruction set: default (torch's pick), avx2 or avx512 (a tooling factor)
precision = "fp32"  # fp32, tf32 or bf16
eval_batch_size = 500  # test examples per evaluation batch (fixed: batch composition changes float results)
snapshot_epochs = []  # epochs after which the test predictions are also stored (each in 1 .. epochs)
keep_probabilities = True  # store the test softmax probabilities (false: predictions only, a much smaller store)
test_every_epoch = True  # evaluate the test set after every epoch (false: after the snapshots and the last epoch only)
extra_tests = True  # also evaluate the dataset's extra test sets at the end, if it has any (MNIST-1D: 20 x 10,000)
data_root = ""  # root of the real datasets; empty: $NNRANDOMNESS_DATA
output_root = ""  # the run store; empty: a fresh temporary directory
hardware = ""  # hardware label, a path component of the store; empty: derived from device and threads
process_per_replica = "auto"  # a fresh process per replica: auto (on CUDA for IMPL and ALGO+IMPL), always or never

# %%
# Refuse unknown or misspelt names (papermill only warns), wrong types, invalid values and a device this
# machine lacks before any training; the rules are the plans' (nnrandomness.params).
parameters = params.from_namespace(globals())
hardware = params.hardware(parameters)
# A temporary store by default: re-executing this chapter (nbval, the book) never touches data/runs.
output_root = output_root or tempfile.mkdtemp(prefix="nnrandomness-runs-")
print(f"hardware label: {hardware}")

# %% [markdown]
# ## What a setting is
#
# A setting says which *algorithmic* sources of randomness (weight init, data order, augmentation,
# dropout) get a fresh seed per replica, and whether the *tooling* runs deterministic kernels.

# %%
pd.DataFrame(
    [
        {
            "setting": s.name,
            "varied sources": ", ".join(sorted(s.varied)) or "none",
            "deterministic kernels": s.deterministic,
            "one-ULP poke": s.perturb_ulp,
            "replicas must be identical": s.expects_identical,
            "description": s.description,
        }
        for s in map(nr.get_setting, settings)
    ]
).set_index("setting")

# %% [markdown]
# Each source draws from its own generator, seeded from (base seed, replica, source). A fixed
# source uses replica 0's seed for every replica; a varied one the replica's own. The first two
# replicas' seeds show which sources a setting varies:

# %%
pd.DataFrame(
    [
        {"setting": s, "replica": k, **nr.noise.replica_seeds(base_seed, k, nr.get_setting(s))}
        for s in settings
        for k in range(min(replicas, 2))
    ]
).set_index(["setting", "replica"])

# %% [markdown]
# ## The recipe
#
# One `ReplicaSpec` per setting holds everything that defines a replica; `run_cell` trains its
# replicas 0 .. replicas-1 and writes each one to the run store under
# `<hardware>/<dataset>/<model>/<setting>/replica-<k>/`.

# %%
# The one mapping from these parameters to a ReplicaSpec (the runner's too).
specs = {s: nr.ReplicaSpec.from_parameters(parameters, s) for s in settings}
# As text: a column of mixed types would print adam_eps=1e-7 as 0.0.
pd.Series(specs[settings[0]].to_dict(), name="value").drop(["setting", "replica", "data_root"]).map(str).to_frame()

# %% [markdown]
# ## Training
#
# Replicas already complete in the store are skipped and an interrupted one resumes from its last
# epoch, so re-running this cell (or a plan) only does the missing work. For a setting that
# promises bit-identical replicas (CONTROL), `run_cell` compares their hashes and raises
# `DeterminismViolation` if they differ.

# %% tags=["nbval-ignore-output"]
cells = {
    s: nr.run_cell(spec, replicas, output_root, hardware, process_per_replica=process_per_replica)
    for s, spec in specs.items()
}

# %% [markdown]
# ## Learning curves
#
# Test accuracy and training loss after every epoch, one line per replica. Under CONTROL the lines
# lie exactly on top of each other.
#
# :::{glue:figure} fig-training-curves
# :name: fig-training-curves
#
# {glue:text}`fig-training-curves-caption`
# :::

# %% tags=["hide-input", "nbval-same-cpu", "remove-output"]
runs = nr.load_runs(output_root, hardware=hardware, dataset=dataset, model=model)
charts.glue_figure("training", "curves", charts.replica_curves(runs.history, settings),
                   "Test accuracy (top) and training loss (bottom) after every epoch, one line per replica, "
                   "one panel per setting", n=replicas, hardware=hardware, cell=f"{dataset}/{model}")

# %% [markdown]
# ## Final accuracies and hashes
#
# The SHA-256 of each replica's final weights and test predictions (first 12 hex digits): equal
# hashes mean bit-identical replicas. Replica 0 of a setting with deterministic kernels draws every
# source from replica 0's seeds, the seeds every CONTROL replica uses: it is bit-identical to them.

# %% tags=["nbval-same-cpu"]
final = pd.concat(cells.values())
final.assign(
    weights_hash=final["weights_hash"].str[:12],
    predictions_hash=final["predictions_hash"].str[:12],
)[["setting", "replica", "test_accuracy", "weights_hash", "predictions_hash"]].set_index(["setting", "replica"])

# %% tags=["nbval-same-cpu"]
final.groupby("setting", sort=False).agg(
    replicas=("replica", "size"),
    mean_accuracy=("test_accuracy", "mean"),
    std_accuracy=("test_accuracy", "std"),
    distinct_weights=("weights_hash", "nunique"),
    distinct_predictions=("predictions_hash", "nunique"),
)
