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
# (determinism-cost)=
# # The cost of determinism
#
# Deterministic training removes the tooling noise (IMPL) but is not free: on GPUs
# {cite:t}`zhuang2022randomness` measured training steps up to 746 % slower with deterministic
# kernels. This chapter reads the study's overhead sweep (training-step time of each model under
# named backend configurations, timed against the fast non-deterministic baseline), lists the
# operations that have no deterministic implementation at all, and then locates, live, when and
# where two replicas that should agree first part: the first step, the first aten op and the
# module it ran in, how far apart they drift per epoch, and which classes and subgroups end up
# with flipped predictions.

# %%
import torch
from myst_nb import glue

from nnrandomness import charts, locate, overhead, train

charts.enable()

# %% tags=["parameters"]
overhead_root = ""  # overhead store root, sweeps in <root>/overhead/<hardware>/; empty: the CLI's default (data/)
overhead_hardware = "cpu-1t"  # hardware label of the sweep shown
dataset = "digits_groups"  # dataset of the divergence search (digits plus a group attribute)
model = "smallcnn"  # model of the divergence search
epochs = 20  # training epochs of each replica pair (the study's recipe)
threads = 1  # intra-op threads of replica A (and of B, except under the factor threads)
threads_b = 2  # replica B's intra-op threads under the factor threads
base_seed = 0  # root of every per-source seed (both replicas draw the same seeds)

# %% [markdown]
# ## Overhead by model and configuration
#
# A *step* is forward pass, loss, backward pass and Adam update on a fixed synthetic batch
# (`nnrandomness.overhead`). Each configuration switches on one part of deterministic mode and is
# timed like the baseline (non-deterministic kernels, cuDNN autotuning on), in blocks interleaved
# with the baseline's, each block in a fresh process with its own untimed warm-up: a process
# keeps cuDNN's autotuned choices, so a configuration timed after the baseline in one process
# would inherit them. In this sweep {glue:text}`cost_method`. Its overhead is
# (median step time / baseline's median step time - 1) x 100; beside the step's wall time the
# sweep sums the kernels' own time with `torch.profiler` (the paper's measure, which leaves out
# launch gaps; on a CPU the operators' own time) and records peak memory, shown after the figure. `det_full` is
# `torch.use_deterministic_algorithms(True)` with cuDNN deterministic and autotuning off, which
# also NaN-fills every uninitialised tensor; `det_no_fill` is the same without that fill, so the
# gap between the two is the fill's share; `bf16` (bfloat16 autocast) is there as a yardstick.
# The cuDNN, cuBLAS-workspace and TF32 configurations ({glue:text}`cost_not_applicable`) change
# nothing on a CPU and are recorded
# as not applicable.
#
# The committed sweep ({glue:text}`cost_hardware`) covers {glue:text}`cost_n_models` models at
# one thread, {glue:text}`cost_n_steps` timed steps per configuration. It is a reduced version
# of the CPU section of `plans/overhead.yaml` that runs in under two minutes on a 2-core
# machine (83 s wall and 75 s CPU time here, with other jobs sharing the machine):
#
# ```bash
# nnrandomness overhead --plan plans/overhead.yaml --device cpu --threads 1 \
#     --models smallcnn,resnet18,mediumcnn_k1,mediumcnn_k3,mediumcnn_k5,mediumcnn_k7,mobilenet_v2,resnet50,densenet121 \
#     --steps 5 --warmup 1 --repeats 3 --root data
# ```
#
# It writes `data/overhead/cpu-1t/results.parquet` and its `manifest.json` (plan, environment,
# checksum). The GPU numbers come from the full plan on a GPU host, which writes
# `data/overhead/cuda-<gpu>/`; set `overhead_hardware` to that label to show them here:
#
# ```bash
# nnrandomness overhead --plan plans/overhead.yaml --device cuda --root data
# ```

# %%
sweep_root = overhead.store_root(overhead_root, repository="..")  # the chapter runs in notebooks/
results, manifest = overhead.read_results(sweep_root, overhead_hardware)
overhead.overhead_table(results)

# %% tags=["remove-cell"]
cost = overhead.cost_numbers(results)
glue("cost_hardware", overhead_hardware, display=False)
glue("cost_n_models", cost["n_models"], display=False)
glue("cost_n_steps", cost["n_steps"], display=False)
glue("cost_det_full_median", cost["det_full_median"], display=False)
glue("cost_det_full_min", cost["det_full_min"], display=False)
glue("cost_det_full_max", cost["det_full_max"], display=False)
glue("cost_det_no_fill_median", cost["det_no_fill_median"], display=False)
glue("cost_baseline_iqr_median", cost["baseline_iqr_median"], display=False)
glue("cost_baseline_iqr_max", cost["baseline_iqr_max"], display=False)
glue("cost_bf16_min", cost["bf16_min"], display=False)
glue("cost_bf16_max", cost["bf16_max"], display=False)
glue("cost_not_applicable", cost["not_applicable"], display=False)
glue("cost_n_unsupported", cost["n_unsupported"], display=False)
glue("cost_method", overhead.method_note(results), display=False)

# %% [markdown]
# On this CPU the deterministic flag costs between {glue:text}`cost_det_full_min` and
# {glue:text}`cost_det_full_max` per model (median over models {glue:text}`cost_det_full_median`;
# without the memory fill {glue:text}`cost_det_no_fill_median`). That is two orders of magnitude
# below the paper's GPU numbers and of the size of the timing noise: the baseline's own
# interquartile range is {glue:text}`cost_baseline_iqr_median` of its median step time for the
# median model (up to {glue:text}`cost_baseline_iqr_max`). Switching to bf16 autocast moves the
# step time far more, from {glue:text}`cost_bf16_min` to {glue:text}`cost_bf16_max`. The reason
# is what the flag changes.
# On a GPU it swaps kernels that accumulate with atomic additions (the backward passes of
# convolutions, scatter and index operations) for slower ordered ones, turns off cuDNN's
# autotuner, which would otherwise pick the fastest convolution algorithm per shape, and NaN-fills
# uninitialised memory. On the CPU there are no atomics in these kernels and no autotuner: the
# convolutions, matrix products, pooling and reductions that these models use have one
# implementation, deterministic at a fixed thread count, so the flag changes little besides
# the memory fill. The reference lines mark what the
# paper measured on its three GPU generations (maximum overhead over its models: 746 % on a
# P100, 241 % on a V100, 196 % on a T4) and the ~15 % of step time that the memory fill alone
# was reported to cost in Megatron-LM training (falling to ~2 % with the fill turned off).
#
# :::{glue:figure} fig-determinism-cost-overhead
# :name: fig-determinism-cost-overhead
#
# {glue:text}`fig-determinism-cost-overhead-caption`
# :::

# %% tags=["hide-input", "remove-output"]
timed = overhead.timed_rows(results)
glue("fig-determinism-cost-overhead", charts.overhead_chart(timed, overhead.model_order(results), overhead_hardware),
     display=True)
glue("fig-determinism-cost-overhead-caption", overhead.overhead_caption(results, manifest, overhead_hardware),
     display=False)

# %% [markdown]
# Step and kernel time, peak memory and the processes behind each number, per model and
# configuration (a sweep written before a measure existed leaves it out). The note says where
# `det_compile` ends otherwise than `det_full` (another status, or step times whose interquartile
# ranges do not overlap), and which models were changed to run deterministically.

# %%
overhead.measures_table(results)

# %% [markdown]
# ### MediumCNN: overhead against kernel size
#
# The paper's MediumCNN(k) isolates one lever: the convolutions' kernel size k. On its GPUs the
# deterministic overhead grew with k, because the backward pass of a larger convolution has more
# partial sums to order. On the CPU, `det_full` goes from {glue:text}`cost_k_first_det_full` at
# k = {glue:text}`cost_k_first` to {glue:text}`cost_k_last_det_full` at k = {glue:text}`cost_k_last`,
# and without the memory fill from {glue:text}`cost_k_first_det_no_fill` to
# {glue:text}`cost_k_last_det_no_fill`: a few percent, within or near the timing noise of
# {glue:text}`cost_n_steps` steps per configuration. If the rise with k is real, the NaN fill of
# the larger buffers a larger kernel needs is the likely part; the sweep alone cannot tell.
#
# :::{glue:figure} fig-determinism-cost-mediumcnn
# :name: fig-determinism-cost-mediumcnn
#
# {glue:text}`fig-determinism-cost-mediumcnn-caption`
# :::

# %% tags=["hide-input", "remove-output"]
k = overhead.kernel_size_numbers(results)
glue("cost_k_first", k["first"], display=False)
glue("cost_k_first_det_full", k["first_det_full"], display=False)
glue("cost_k_first_det_no_fill", k["first_det_no_fill"], display=False)
glue("cost_k_last", k["last"], display=False)
glue("cost_k_last_det_full", k["last_det_full"], display=False)
glue("cost_k_last_det_no_fill", k["last_det_no_fill"], display=False)
k_chart = charts.kernel_size_chart(overhead.kernel_size_rows(results), timed["configuration"], overhead_hardware)
glue("fig-determinism-cost-mediumcnn", k_chart, display=True)
glue("fig-determinism-cost-mediumcnn-caption", overhead.kernel_size_caption(results, overhead_hardware), display=False)

# %% [markdown]
# ### Across hardware
#
# Every sweep in the overhead store sits under its own hardware label (`cpu-1t` here; a GPU host
# adds `cuda-<gpu>` with `nnrandomness overhead --device cuda --notebook --root data`). The table
# sets the deterministic flag's overhead side by side for every label the store holds, per model;
# {glue:text}`cost_hardware_note`

# %%
sweeps = overhead.read_all(sweep_root)  # every hardware label with a complete sweep
overhead.across_hardware(sweeps)

# %% tags=["remove-cell"]
glue("cost_hardware_note", overhead.hardware_note(sweeps), display=False)

# %% [markdown]
# ## Operations without a deterministic implementation
#
# Some operations have no deterministic kernel at all: under the flag they raise a
# `RuntimeError` instead of running, and the sweep records the op (`status` "unsupported") and
# goes on. The table joins the ops the sweep hit ({glue:text}`cost_n_unsupported` on
# {glue:text}`cost_hardware`) with the list in the docstring of the installed torch's
# `torch.use_deterministic_algorithms`. Nearly all of them are CUDA-side: their CPU kernels
# are deterministic, which is why no model raises on this CPU. On a GPU, torchvision's VGG-16 and
# VGG-19 would hit one: their `AdaptiveAvgPool2d((7, 7))` has no deterministic CUDA backward.
# Keras' VGG, which the paper timed, has no such pool (it flattens the last 7x7 map), and at the
# paper's 224 px torchvision's is an identity; so the study's VGG skips it where it is one
# (`models.KerasVGGPool`, recorded in each VGG row's `model_changes`), and raises only at inputs
# whose last map is not 7x7. The other models' `AdaptiveAvgPool2d((1, 1))` is computed as a
# mean, which has a deterministic backward. NLLLoss is on the list
# too, so the study's loss (`train.cross_entropy`) is written as one-hot times log-softmax.

# %%
documented = overhead.documented_ops(torch.use_deterministic_algorithms.__doc__, torch.__version__)
overhead.unsupported_ops(results, overhead_hardware, documented)

# %% [markdown]
# ## When and where replicas diverge
#
# Two replicas of one recipe, {glue:text}`div_model` on {glue:text}`div_dataset` for
# {glue:text}`div_epochs` epochs ({glue:text}`div_steps_per_epoch` steps each), are trained in
# lockstep with the same seeds, so the same initial weights, data order and augmentation
# (`locate.locate_divergence`). They differ in one factor only:
#
# * **threads**: replica A runs at {glue:text}`div_threads_a` intra-op thread(s), B at
#   {glue:text}`div_threads_b`;
# * **ulp**: B's initial weights have one weight moved by one unit in the last place;
# * **impl**: both run with non-deterministic kernels allowed (the deterministic flag off).
#
# Every aten op of a step is hashed in both replicas and compared in call order, so the search
# names the first op whose output bits differ and the module it ran in. These pairs run when
# the chapter is executed; everything else in the chapter runs at one thread.

# %% tags=["nbval-same-cpu"]
spec = train.ReplicaSpec(dataset=dataset, model=model, epochs=epochs, threads=threads, base_seed=base_seed)
reports = {
    "threads": locate.locate_divergence(spec, "threads", threads_b=threads_b),
    # No trace for these two: the ULP pair differs from step 0 (before any op runs) and the
    # IMPL pair, if it stays identical, would be traced through every step.
    "ulp": locate.locate_divergence(spec, "ulp", trace=False),
    "impl": locate.locate_divergence(spec, "impl", trace=False),
}
for r in reports.values():
    print(r.summary(), end="\n\n")

# %% tags=["nbval-same-cpu", "remove-cell"]
div = overhead.divergence_numbers(reports)
glue("div_model", model, display=False)
glue("div_dataset", dataset, display=False)
glue("div_epochs", str(epochs), display=False)
glue("div_steps_per_epoch", div["steps_per_epoch"], display=False)
glue("div_threads_a", div["threads_a"], display=False)
glue("div_threads_b", div["threads_b"], display=False)
glue("div_threads_step", div["threads_step"], display=False)
glue("div_threads_op", div["threads_op"], display=False)
glue("div_threads_op_index", div["threads_op_index"], display=False)
glue("div_threads_ops_differ", div["threads_ops_differ"], display=False)
glue("div_threads_parts", div["threads_parts"], display=False)
glue("div_threads_l2_epoch1", div["threads_l2_epoch1"], display=False)
glue("div_threads_l2_final", div["threads_l2_final"], display=False)
glue("div_threads_flips", div["threads_flips"], display=False)
glue("div_threads_flips_pct", div["threads_flips_pct"], display=False)
glue("div_ulp_l2_epoch1", div["ulp_l2_epoch1"], display=False)
glue("div_ulp_l2_final", div["ulp_l2_final"], display=False)
glue("div_ulp_flips", div["ulp_flips"], display=False)
glue("div_ulp_flips_pct", div["ulp_flips_pct"], display=False)
glue("div_ulp_weight", div["ulp_weight"], display=False)
glue("div_impl_result", div["impl_result"], display=False)
glue("div_impl_steps", div["impl_steps"], display=False)

# %% [markdown]
# At {glue:text}`div_threads_a` versus {glue:text}`div_threads_b` threads the replicas part at
# step {glue:text}`div_threads_step`, the very first update (what differs after it:
# {glue:text}`div_threads_parts`). The first op whose output bits differ is {glue:text}`div_threads_op` (op
# {glue:text}`div_threads_op_index` of the step; {glue:text}`div_threads_ops_differ` ops of the
# step differ): a matrix product whose inner dimension is the batch is summed in another order
# when two threads split it. The forward pass and the loss are still bit-identical; only the
# sums over the batch in the backward pass are not. The ULP pair differs from step 0
# ({glue:text}`div_ulp_weight`). Both differences start in the last bits (weight distance
# {glue:text}`div_threads_l2_epoch1` and {glue:text}`div_ulp_l2_epoch1` after one epoch) and
# grow by orders of magnitude as training goes on, to {glue:text}`div_threads_l2_final` and
# {glue:text}`div_ulp_l2_final` after the last epoch. By then {glue:text}`div_threads_flips`
# test predictions ({glue:text}`div_threads_flips_pct`) differ between the thread-count replicas
# and {glue:text}`div_ulp_flips` between the ULP replicas: one pair of replicas, after this
# short recipe, has barely pushed any test example across a decision boundary; what the same
# perturbations do across many replicas (predictive churn) is measured in {ref}`topline`.
#
# The IMPL pair shows {glue:text}`div_impl_result` in {glue:text}`div_impl_steps` steps: on
# the CPU at a fixed thread count the kernels of this network are deterministic with or
# without the flag, as {ref}`topline` finds for whole IMPL replicas. It takes a GPU (atomics,
# autotuning) for this factor to matter, which is also where the flag costs time.
#
# :::{glue:figure} fig-determinism-cost-divergence
# :name: fig-determinism-cost-divergence
#
# {glue:text}`fig-determinism-cost-divergence-caption`
# :::

# %% tags=["hide-input", "nbval-same-cpu", "remove-output"]
histories = {name: r.history for name, r in reports.items()}
glue("fig-determinism-cost-divergence",
     charts.divergence_chart(histories, f"How far two replicas drift apart ({model} on {dataset})"), display=True)
glue("fig-determinism-cost-divergence-caption", overhead.divergence_caption(reports, epochs, dataset, model),
     display=False)

# %% [markdown]
# Which test examples flipped at the end, per class and per subgroup (class x the dataset's
# group attribute, `inverted`): the rows with at least one flipped prediction, for each factor.
# Subgroups with few test examples are where a single flip weighs most.

# %%
overhead.flipped_table(reports)
