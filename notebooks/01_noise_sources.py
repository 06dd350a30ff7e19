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
# (noise-sources)=
# # Where the randomness comes from
#
# Train the same network twice, with the same code on the same data, and you usually get two
# different models. {cite:t}`zhuang2022randomness` sort the causes into two kinds.
# **Algorithmic** randomness is randomness the recipe asks for: the initial weights, the order in
# which training examples are visited, the augmentation draws and the dropout masks.
# **Tooling** randomness comes from how the arithmetic is carried out: GPU kernels that add
# numbers in whatever order their threads finish, autotuners that pick a different algorithm
# from one run to the next, the number of CPU threads a sum is split across, the hardware and
# the library versions. Floating-point addition is not associative, so any change in the order
# of a sum can change the last bits of its result, and training amplifies those bits. How much
# run-to-run variation matters in practice is the subject of a literature of its own
# {cite:p}`bouthillier2021accounting,picard2021seed`.
#
# This chapter shows each source live, on a laptop CPU, with the package the rest of the book
# uses: the settings that switch sources on and off ({ref}`noise-sources-settings`), how a
# replica gets its seeds ({ref}`noise-sources-seeds`), how the number of threads changes bits
# ({ref}`noise-sources-threads`), how a change in one bit of one weight grows into different
# predictions ({ref}`noise-sources-ulp`), and a kernel that is non-deterministic even on a CPU
# ({ref}`noise-sources-kernels`). It ends with what a CPU cannot show
# ({ref}`noise-sources-cpu-limits`).
#
# Everything here runs at **one thread** (`torch.set_num_threads(1)` below) unless a cell sets
# another thread count on purpose, and every random draw comes from a fixed seed, so re-running
# the chapter on the same machine gives the same numbers. (The one experiment whose outcome is
# random by nature, in {ref}`noise-sources-kernels`, leaves its random count unprinted.)

# %%
import dataclasses

import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from nnrandomness import ReplicaSpec, charts, data, load_dataset, metrics, models, noise, store, train, train_replica

charts.enable()
torch.set_num_threads(1)  # the thread count changes bits: pin it (cells that vary it say so)
CHAPTER = "noise-sources"  # figure names: charts.figure_name(CHAPTER, slug)
BASE_SEED = 0  # root of every per-source seed in this chapter
digits = load_dataset("digits")  # scikit-learn's 8x8 digits, shipped with the package


def smallcnn(generator):
    """The paper's SmallCNN for digits, initialised from `generator`."""
    return models.build_model("smallcnn", digits.num_classes, digits.in_channels,
                              generator=generator)


def numpy_weights(state):
    """A state_dict as numpy arrays, the form metrics.pairwise_l2 takes."""
    return {name: tensor.detach().numpy() for name, tensor in state.items()}


# %% [markdown]
# (noise-sources-settings)=
# ## The settings
#
# A *setting* says which algorithmic sources get a fresh seed for every replica and whether the
# kernels must be deterministic. The first four rows are the settings of
# {cite:t}`zhuang2022randomness`: ALGO+IMPL (everything varies, as in ordinary training), ALGO
# (only the algorithmic sources vary), IMPL (only the tooling varies) and CONTROL (nothing
# varies: its replicas must be bit-identical, which the package checks). The next four split
# ALGO into its sources, one at a time. The last one, ULP, changes nothing but one weight of the
# initial model, by one unit in the last place, after {cite:t}`summers2021nondeterminism`.
# Precision (fp32, TF32, bf16) and the CPU thread count are tooling factors set beside the
# setting, not in it.

# %%
def settings_table(settings):
    rows = []
    for s in settings.values():
        row = {"setting": s.name, "paper": s.name in noise.PAPER_SETTINGS}
        row.update({src: "varies" if src in s.varied else "-" for src in noise.SOURCES})
        row["+1 ULP"] = "yes" if s.perturb_ulp else "-"
        row["kernels"] = "determ." if s.deterministic else "non-determ."
        row["bit-identical"] = s.expects_identical
        rows.append(row)
    return pd.DataFrame(rows).set_index("setting")


settings_table(noise.SETTINGS)

# %% tags=["hide-input", "remove-output"]
glue(charts.figure_name(CHAPTER, "settings"), charts.settings_legend(), display=True)

# %% [markdown]
# :::{glue:figure} fig-noise-sources-settings
# :name: fig-noise-sources-settings
# The nine settings in the colours every chart of the book gives them: the paper's four
# (ALGO+IMPL, ALGO, IMPL, CONTROL), the single-source decomposition of ALGO, and the one-ULP
# perturbation.
# :::

# %% [markdown]
# (noise-sources-seeds)=
# ## One seed per source and replica
#
# Each replica draws from five independent random streams: `init`, `order`, `aug`, `dropout`,
# and `perturb` (which weight the ULP setting moves). The seed of a stream is a hash of
# (base seed, replica, stream); a source the setting keeps fixed uses replica 0 for every replica.
# Under ALGO every stream of replica 1 differs from replica 0's; under CONTROL none does; under
# ORDER only the data order does:

# %%
def seed_table(setting_names, replicas=(0, 1)):
    rows = []
    for name in setting_names:
        setting = noise.get_setting(name)
        seeds = [noise.replica_seeds(BASE_SEED, k, setting) for k in replicas]
        for stream in noise.STREAMS:
            row = {"setting": name, "stream": stream}
            for k, s in zip(replicas, seeds):
                row[f"replica {k}"] = f"{s[stream]:016x}"  # 63-bit seed, in hex
            row["changes"] = len({s[stream] for s in seeds}) > 1
            rows.append(row)
    return pd.DataFrame(rows).set_index(["setting", "stream"])


seeds = seed_table(["ALGO", "CONTROL", "ORDER"])
seeds

# %% [markdown]
# Every stream has a `torch.Generator` of its own, so one source cannot shift another. Two ORDER
# replicas start from bit-identical weights (the same SHA-256 over every parameter) and visit the
# training examples in different orders; two ALGO replicas differ in both:

# %%
def first_draws(setting_name, replica):
    setting = noise.get_setting(setting_name)
    gens = noise.make_generators(noise.replica_seeds(BASE_SEED, replica, setting))
    model = smallcnn(gens["init"])
    # the permutation train_replica draws for epoch 1
    order = torch.randperm(len(digits.y_train), generator=gens["order"])
    return {
        "setting": setting_name,
        "replica": replica,
        "initial weights (sha256)": store.weights_hash(model.state_dict())[:16],
        "first examples of epoch 1": order[:5].tolist(),
    }


draws = pd.DataFrame([first_draws(name, k) for name in ("ORDER", "ALGO") for k in (0, 1)])
draws

# %% [markdown]
# With one generator for everything, as with a single `torch.manual_seed` at the top of a script,
# the streams are entangled: draw one number for the data order before building the model (a
# shuffle moved earlier, an extra augmentation) and every initial weight changes.

# %%
one = torch.Generator().manual_seed(BASE_SEED)
model_a = smallcnn(one)
one = torch.Generator().manual_seed(BASE_SEED)
torch.rand(1, generator=one)  # one extra draw for "the data order"
model_b = smallcnn(one)
store.weights_hash(model_a.state_dict()) == store.weights_hash(model_b.state_dict())

# %% [markdown]
# (noise-sources-threads)=
# ## The thread count changes bits
#
# In floating point, the order of a sum matters:

# %%
(0.1 + 0.2) + 0.3, 0.1 + (0.2 + 0.3)

# %% [markdown]
# A CPU kernel that splits a reduction across threads adds partial sums in a different order for
# each thread count. Below, one SmallCNN sees one batch of 128 digits and computes its loss and
# gradients, at one thread, at two threads, and at each again. Each computation is repeated to
# check that a fixed thread count reproduces itself bit for bit.

# %% tags=["nbval-same-cpu"]
CONTROL_SEEDS = noise.replica_seeds(BASE_SEED, 0, noise.get_setting("CONTROL"))
x_batch = data.to_float(digits.x_train[:128], digits.normalization)  # one batch of 128
y_batch = digits.y_train[:128]


def one_step(threads):
    """Logits, loss and gradients of one batch at `threads` threads (CONTROL's init)."""
    config = noise.BackendConfig(deterministic=True, threads=threads)
    with noise.configure_determinism(config):
        model = smallcnn(noise.make_generators(CONTROL_SEEDS)["init"])
        logits = model(x_batch)
        loss = train.cross_entropy(logits, y_batch)
        loss.backward()
    grads = {f"grad {name}": p.grad for name, p in model.named_parameters()}
    return {"logits": logits.detach(), "loss": loss.detach(), **grads}


runs = {(threads, k): one_step(threads) for threads in (1, 2) for k in (0, 1)}
rows = []
for key, value in runs[1, 0].items():
    rows.append({
        "tensor": key,
        # each thread count, run twice: bit for bit the same?
        "repeats (1, 2 thr.)": (torch.equal(value, runs[1, 1][key]),
                                torch.equal(runs[2, 0][key], runs[2, 1][key])),
        "1 thr. = 2 thr.": torch.equal(value, runs[2, 0][key]),
        "max abs diff": float((value - runs[2, 0][key]).abs().max()),
        "max abs value": float(value.abs().max()),
    })
step = pd.DataFrame(rows).set_index("tensor")
glue("step_tensors", len(step), display=False)
glue("step_differing", int((~step["1 thr. = 2 thr."]).sum()), display=False)
glue("step_max_diff", float(step["max abs diff"].max()), display=False)
glue("step_reproduces", bool(all(all(pair) for pair in step["repeats (1, 2 thr.)"])),
     display=False)
step.assign(**{"max abs diff": step["max abs diff"].map("{:.1e}".format),
              "max abs value": step["max abs value"].map("{:.3f}".format)})

# %% [markdown]
# {glue:text}`step_differing` of the {glue:text}`step_tensors` tensors differ between one and two
# threads, by at most {glue:text}`step_max_diff:.1e`: a rounding difference in the last bits of
# some gradients, which sum over the 128 examples of the batch. Which tensors differ depends on
# how each kernel splits its work between threads, and so on the CPU and the library versions.
# Every computation reproduces itself exactly
# at a fixed thread count (both repeats identical for every tensor: {glue:text}`step_reproduces`). The
# thread count is therefore a tooling factor of its own: the package records it with every run
# and the book's default pins it to one.
#
# One step's difference is tiny. The next section trains replicas for longer and follows it.

# %% [markdown]
# (noise-sources-ulp)=
# ## From one bit to different predictions
#
# The smallest change one can make to a training run is to move one weight of the initial model
# to the next representable float. The ULP setting does this with `noise.perturb_one_ulp`, at a
# weight chosen by its own `perturb` stream; everything else is CONTROL's replica 0.

# %%
ULP_SEEDS = noise.replica_seeds(BASE_SEED, 0, noise.get_setting("ULP"))
ulp_gens = noise.make_generators(ULP_SEEDS)
reference_init = smallcnn(noise.make_generators(CONTROL_SEEDS)["init"])
poked_init = smallcnn(ulp_gens["init"])  # the same init seed as CONTROL...
poke = noise.perturb_one_ulp(poked_init, ulp_gens["perturb"])  # ...then one weight moved

before = numpy_weights(reference_init.state_dict())
after = numpy_weights(poked_init.state_dict())
n_weights = models.count_parameters(reference_init)
n_changed = sum(int((before[k] != after[k]).sum()) for k in before)
ulp_init_l2 = float(metrics.pairwise_l2([before, after])[0, 1])
glue("ulp_parameter", poke["parameter"], display=False)
glue("ulp_index", poke["index"], display=False)
glue("ulp_old", poke["old"], display=False)
glue("ulp_new", poke["new"], display=False)
glue("ulp_init_l2", ulp_init_l2, display=False)
glue("n_weights", n_weights, display=False)
glue("ulp_changed", n_changed, display=False)
poke, n_changed, n_weights, ulp_init_l2

# %% [markdown]
# Weight {glue:text}`ulp_index` of {glue:text}`ulp_parameter` moved from
# {glue:text}`ulp_old:.10f` to {glue:text}`ulp_new:.10f`: {glue:text}`ulp_changed` of
# {glue:text}`n_weights:,` weights changed, by {glue:text}`ulp_init_l2:.1e`.
#
# Now train. `train_replica` returns the final weights and test predictions of a replica, and a
# replica trained for $E$ epochs is exactly the first $E$ epochs of a longer one (the learning rate
# schedule and every random stream depend only on the epoch), so training for
# $E = 1, 2, 4, \dots$ epochs follows one run through time. Beside the one-ULP pair, two
# comparisons with the same reference (CONTROL, one thread): the same CONTROL replica trained at
# **two threads**, and a replica with a **fresh seed for every source** (ALGO's replica 1), the
# yardstick of ordinary run-to-run variation.

# %% tags=["nbval-same-cpu"]
EPOCHS = (1, 2, 4, 8, 16, 32)  # training lengths (a separate, short run each)
THREAD_EPOCHS = (1, 2, 4, 8, 16)  # 2 threads are slower for so small a net: stop earlier
reference = ReplicaSpec(dataset="digits", model="smallcnn", setting="CONTROL",
                        lr=2e-3, threads=1)
changes = {  # comparison -> (how its replica differs from the reference, lengths)
    "one ULP": (dict(setting="ULP"), EPOCHS),
    "two threads": (dict(threads=2), THREAD_EPOCHS),
    "fresh seeds": (dict(setting="ALGO", replica=1), EPOCHS),
}
rows = []
for epochs in EPOCHS:
    ref = train_replica(dataclasses.replace(reference, epochs=epochs), digits)
    for comparison, (change, lengths) in changes.items():
        if epochs not in lengths:
            continue
        spec = dataclasses.replace(reference, epochs=epochs, **change)
        other = train_replica(spec, digits)
        weights = [numpy_weights(ref.weights), numpy_weights(other.weights)]
        rows.append({
            "epochs": epochs,
            "comparison": comparison,
            "L2 distance": float(metrics.pairwise_l2(weights)[0, 1]),
            "differing predictions": int((ref.predictions != other.predictions).sum()),
            "reference accuracy": float((ref.predictions == ref.labels).mean()),
        })
growth = pd.DataFrame(rows)
n_test = len(digits.y_test)
growth["fraction differing"] = growth["differing predictions"] / n_test
# one row per training length; <NA>: not trained that long
table = growth.pivot(index="epochs", columns="comparison",
                     values=["L2 distance", "differing predictions"])
table = table.astype({("differing predictions", c): "Int64" for c in changes})
table["L2 distance"] = table["L2 distance"].map("{:.1e}".format).replace("nan", "<NA>")
table

# %% tags=["hide-input", "nbval-same-cpu", "remove-output"]
colours = dict(zip(changes, ("ULP", "IMPL", "ALGO")))  # comparison -> the setting whose colour it takes
glue(charts.figure_name(CHAPTER, "growth"), charts.divergence_growth(growth, colours, EPOCHS, n_test), display=True)

# %% tags=["nbval-same-cpu", "remove-cell"]
at = growth.set_index(["comparison", "epochs"])  # one row per comparison and length
E, E2 = EPOCHS[-1], THREAD_EPOCHS[-1]
numbers = {
    "epochs_max": E,
    "thread_epochs_max": E2,
    "n_test": n_test,
    "ref_accuracy": at.loc[("one ULP", E), "reference accuracy"],
    "ulp_l2_first": at.loc[("one ULP", 1), "L2 distance"],
    "ulp_l2_last": at.loc[("one ULP", E), "L2 distance"],
    "ulp_growth_orders": np.log10(at.loc[("one ULP", E), "L2 distance"] / ulp_init_l2),
    "ulp_flips_last": at.loc[("one ULP", E), "differing predictions"],
    "ulp_flips_last_frac": at.loc[("one ULP", E), "fraction differing"],
    "ulp_flips_max": at.loc["one ULP", "differing predictions"].max(),
    "threads_l2_first": at.loc[("two threads", 1), "L2 distance"],
    "threads_l2_last": at.loc[("two threads", E2), "L2 distance"],
    "threads_flips_last": at.loc[("two threads", E2), "differing predictions"],
    "threads_flips_last_frac": at.loc[("two threads", E2), "fraction differing"],
    "algo_l2_last": at.loc[("fresh seeds", E), "L2 distance"],
    "algo_flips_last": at.loc[("fresh seeds", E), "differing predictions"],
    "algo_flips_last_frac": at.loc[("fresh seeds", E), "fraction differing"],
}
for name, value in numbers.items():  # plain Python numbers: glue shows their repr
    glue(name, value.item() if hasattr(value, "item") else value, display=False)

# %% [markdown]
# :::{glue:figure} fig-noise-sources-growth
# :name: fig-noise-sources-growth
# Distance to a reference replica (CONTROL, one thread) after training for 1 to
# {glue:text}`epochs_max` epochs: of the final weights (left, log scale) and of the test
# predictions (right: how many of the {glue:text}`n_test` test digits get another class,
# symmetric log scale). One replica per comparison
# and training length (the two-thread one up to {glue:text}`thread_epochs_max` epochs); SmallCNN,
# digits, Adam at 2e-3, one CPU.
# :::
#
# The replica that started {glue:text}`ulp_init_l2:.1e` away is {glue:text}`ulp_l2_first:.1e`
# away after one epoch and {glue:text}`ulp_l2_last:.2f` away after {glue:text}`epochs_max`:
# {glue:text}`ulp_growth_orders:.0f` orders of magnitude. The two-thread replica starts
# identical and picks up rounding differences at every step: it is
# {glue:text}`threads_l2_first:.1e` away after one epoch and {glue:text}`threads_l2_last:.1e`
# after {glue:text}`thread_epochs_max`. A replica with fresh seeds starts from other weights
# altogether and stays {glue:text}`algo_l2_last:.1f` away.
#
# Predictions are a coarser measure: a test digit changes its predicted class only when the
# difference tips it across a decision boundary. After {glue:text}`thread_epochs_max` epochs the
# two-thread replica predicts a different class for {glue:text}`threads_flips_last` of the
# {glue:text}`n_test` test digits ({glue:text}`threads_flips_last_frac:.1%`). After
# {glue:text}`epochs_max` epochs (reference accuracy {glue:text}`ref_accuracy:.1%`),
# {glue:text}`ulp_flips_last` test digits ({glue:text}`ulp_flips_last_frac:.1%`) get a different
# class from the one-ULP replica (at most {glue:text}`ulp_flips_max` at any length), and
# {glue:text}`algo_flips_last` ({glue:text}`algo_flips_last_frac:.1%`) from the replica with
# fresh seeds. With one replica per point and a small test set these counts are noisy; the later
# chapters use ten replicas per setting. {cite:t}`summers2021nondeterminism` found that a change
# of a single bit in one initial weight leads, by the end of training, to about as much
# variability between models as any other
# source of nondeterminism: once training has amplified the first difference, where it came from
# no longer matters much. Tooling noise such as the thread count is such a first difference,
# injected at every step.

# %% [markdown]
# (noise-sources-kernels)=
# ## A non-deterministic kernel on the CPU
#
# The differences so far were reproducible: the same thread count gives the same bits. A truly
# non-deterministic kernel gives different bits from one call to the next, with nothing changed.
# On a GPU these are common (atomic additions from thousands of threads). On the CPU, PyTorch's
# accumulating `index_put_` is one: at two threads it adds into the output with atomic operations,
# so the order of the additions depends on how the two threads happen to interleave.
# `torch.use_deterministic_algorithms(True)`, which `noise.configure_determinism` sets for the
# deterministic settings, switches it to a single-threaded loop that always adds in the same order.

# %%
KERNEL_RUNS = 20  # calls per mode
gen = torch.Generator().manual_seed(BASE_SEED)
index = torch.randint(0, 10, (1_000_000,), generator=gen)  # a million values, 10 bins
values = torch.rand(1_000_000, generator=gen)


def accumulate():
    out = torch.zeros(10)
    out.index_put_((index,), values, accumulate=True)
    return out


distinct = {}  # kernel mode -> number of distinct bit patterns among the results
for deterministic in (False, True):
    config = noise.BackendConfig(deterministic=deterministic, threads=2)
    with noise.configure_determinism(config):
        results = [accumulate() for _ in range(KERNEL_RUNS)]
    distinct[deterministic] = len({r.numpy().tobytes() for r in results})

# How many distinct results the race gives is random (it depends on how the threads interleave),
# so this page prints only what is certain; evaluate `distinct[False]` to see your run's count.
glue("kernel_runs", KERNEL_RUNS, display=False)
glue("kernel_det_distinct", distinct[True], display=False)
{"deterministic kernels: distinct results": distinct[True]}

# %% [markdown]
# With the default (non-deterministic) kernels, how many distinct results {glue:text}`kernel_runs`
# identical calls at two threads give is itself random: it depends on how the two threads happen
# to interleave, and a busy or single-core machine may not interleave them at all. So this page
# does not print it (a committed number would be wrong on the next run); evaluate `distinct[False]`
# after running the cell. On an idle two-core machine it is usually more than one, and the test
# suite's divergence locator catches this very kernel (`tests/test_locate.py`).
# With deterministic algorithms on, the {glue:text}`kernel_runs` calls gave
# {glue:text}`kernel_det_distinct` distinct result. The gradient of advanced indexing (`w[idx]`
# in a forward pass) is computed with the same accumulating kernel, and behaves the same way.
#
# The training loop of the package uses no such kernel, so on the CPU the IMPL setting (tooling
# noise only) gives replicas that are bit-identical at a fixed thread count, exactly like CONTROL:

# %%
impl = [train_replica(ReplicaSpec(setting="IMPL", replica=k, epochs=2, lr=2e-3, threads=1),
                     digits)
        for k in (0, 1)]
impl_identical = store.weights_hash(impl[0].weights) == store.weights_hash(impl[1].weights)
glue("impl_identical_cpu", impl_identical, display=False)
impl_identical

# %% [markdown]
# (noise-sources-cpu-limits)=
# ## What a CPU cannot show
#
# The tooling noise of {cite:t}`zhuang2022randomness` is GPU noise, and the CPU reproduces only
# part of it:
#
# - **Atomic additions.** Many CUDA kernels (scatter and index additions, some convolution
#   backward algorithms, embedding gradients) accumulate with atomics from thousands of threads,
#   in an order that changes at every call. On the CPU we found one such kernel above; the
#   package's training loop does not hit it.
# - **Autotuning.** With `torch.backends.cudnn.benchmark = True`, cuDNN times several algorithms
#   for each convolution shape on first use and keeps the fastest. Timings are noisy, so two runs
#   can choose different algorithms, which sum in different orders. This has no CPU counterpart
#   here.
# - **Reduced precision and hardware.** TF32 matrix multiplication, the GPU model and the
#   CUDA/cuDNN versions each change results; the study records them and treats them as factors.
#   On the CPU the instruction set used by the kernels and the thread count play that role.
#
# So on this CPU, IMPL equals CONTROL (IMPL replicas bit-identical: {glue:text}`impl_identical_cpu`)
# and the thread count is the tooling factor we can measure. The GPU plan of the study runs the
# same code with the non-deterministic GPU kernels switched on. {cite:t}`pham2020variance` found
# that implementation-level nondeterminism alone, with every seed fixed, changes the accuracy of
# trained models in several deep-learning libraries. The next chapter,
# {ref}`metrics`, defines how the book measures the differences between replicas.
