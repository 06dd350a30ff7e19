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
import re
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from nnrandomness import charts, locate, overhead, train

charts.enable()

# %% tags=["parameters"]
overhead_root = "../data"  # overhead store root, relative to notebooks/: sweeps in <root>/overhead/<hardware>/
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
# timed in the same process as the baseline (non-deterministic kernels, cuDNN autotuning on),
# in interleaved blocks after untimed warm-up steps; its overhead is
# (median step time / baseline's median step time - 1) x 100. `det_full` is
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
results, manifest = overhead.read_results(overhead_root, overhead_hardware)
baseline = results[results.configuration == overhead.BASELINE].set_index("model")
timed = results[(results.status == "ok") & (results.configuration != overhead.BASELINE)].copy()
base_ms = timed["model"].map(baseline["median_ms"])
timed["overhead_lo"] = (timed["q1_ms"] / base_ms - 1) * 100  # the configuration's IQR, relative to the baseline
timed["overhead_hi"] = (timed["q3_ms"] / base_ms - 1) * 100
timed["baseline_ms"] = base_ms
summary = timed.pivot(index="model", columns="configuration", values="overhead_pct")
summary.insert(0, "baseline median (ms)", baseline["median_ms"])
summary.sort_values("baseline median (ms)").round(1)

# %% tags=["hide-input"]
det = timed[timed.configuration == "det_full"].set_index("model")["overhead_pct"]
no_fill = timed[timed.configuration == "det_no_fill"].set_index("model")["overhead_pct"]
base_iqr = (baseline["q3_ms"] - baseline["q1_ms"]) / baseline["median_ms"] * 100
glue("cost_hardware", overhead_hardware, display=False)
glue("cost_n_models", str(results["model"].nunique()), display=False)
glue("cost_n_steps", str(int(baseline["n_steps"].iloc[0])), display=False)
glue("cost_det_full_median", f"{det.median():+.1f} %", display=False)
glue("cost_det_full_min", f"{det.min():+.1f} %", display=False)
glue("cost_det_full_max", f"{det.max():+.1f} %", display=False)
glue("cost_det_no_fill_median", f"{no_fill.median():+.1f} %", display=False)
glue("cost_baseline_iqr_median", f"{base_iqr.median():.0f} %", display=False)
glue("cost_baseline_iqr_max", f"{base_iqr.max():.0f} %", display=False)
bf16 = timed[timed.configuration == "bf16"].set_index("model")["overhead_pct"]
glue("cost_bf16_min", f"{bf16.min():+.1f} %" if len(bf16) else "n/a", display=False)
glue("cost_bf16_max", f"{bf16.max():+.1f} %" if len(bf16) else "n/a", display=False)
not_applicable = sorted(results.loc[results.status == "not_applicable", "configuration"].unique())
glue("cost_not_applicable", ", ".join(not_applicable), display=False)
glue("cost_n_unsupported", str(int((results.status == "unsupported").sum())), display=False)

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

# %% tags=["hide-input"]
configs = [c for c in ["det_full", "det_no_fill", "bf16"] if c in set(timed.configuration)]
models_order = baseline.loc[timed["model"].unique(), "median_ms"].sort_values().index.tolist()
plot = charts.tidy_limit(timed[["model", "configuration", "overhead_pct", "overhead_lo", "overhead_hi", "median_ms",
                                "q1_ms", "q3_ms", "n_steps", "baseline_ms"]])
tips = ["model:N", "configuration:N", alt.Tooltip("overhead_pct:Q", title="overhead %", format="+.1f"),
        alt.Tooltip("median_ms:Q", title="median step (ms)", format=".1f"),
        alt.Tooltip("q1_ms:Q", title="IQR low (ms)", format=".1f"),
        alt.Tooltip("q3_ms:Q", title="IQR high (ms)", format=".1f"),
        alt.Tooltip("baseline_ms:Q", title="baseline median (ms)", format=".1f"),
        alt.Tooltip("n_steps:Q", title="timed steps")]
x_scale = alt.Scale(type="symlog", constant=10, domain=[-100, 1000])  # symlog: negative noise and 746 % on one axis
y = alt.Y("model:N", sort=models_order, title=None)
color = alt.Color("configuration:N", sort=configs, title="configuration",
                  scale=alt.Scale(domain=configs, range=["#D55E00", "#009E73", "#0072B2"][: len(configs)]))
base_layer = alt.Chart(plot).encode(y=y, yOffset=alt.YOffset("configuration:N", sort=configs), color=color,
                                    tooltip=tips)
iqr = base_layer.mark_rule(strokeWidth=2).encode(x=alt.X("overhead_lo:Q", scale=x_scale), x2="overhead_hi:Q")
points = base_layer.mark_point(filled=True, size=60).encode(
    x=alt.X("overhead_pct:Q", scale=x_scale, title="overhead over the baseline (%, symmetric log scale)",
            axis=alt.Axis(values=[-100, -50, -10, 0, 10, 50, 100, 200, 500, 1000])))
refs = pd.DataFrame({
    "overhead_pct": [746, 241, 196, 15],
    "label": ["paper max, P100: 746 %", "paper max, V100: 241 %", "paper max, T4: 196 %",
              "memory fill, Megatron-LM: ~15 %"],
})
ref_tips = [alt.Tooltip("label:N", title="reference")]
rules = alt.Chart(refs).mark_rule(strokeDash=[4, 3], color="#555555").encode(
    x=alt.X("overhead_pct:Q", scale=x_scale), tooltip=ref_tips)
labels = alt.Chart(refs).mark_text(angle=270, align="right", baseline="bottom", dx=-4, dy=-2, fontSize=10,
                                   color="#555555").encode(
    x=alt.X("overhead_pct:Q", scale=x_scale), y=alt.value(0), text="label:N", tooltip=ref_tips)
zero = alt.Chart(pd.DataFrame({"overhead_pct": [0]})).mark_rule(color="black").encode(
    x=alt.X("overhead_pct:Q", scale=x_scale))
chart = alt.layer(zero, rules, labels, iqr, points).properties(
    width=520, height=alt.Step(12), title=f"Step-time overhead per model and configuration ({overhead_hardware})")
glue("fig-determinism-cost-overhead", chart, display=False)
env = manifest["environment"]
glue("fig-determinism-cost-overhead-caption",
     f"Overhead of each configuration over the baseline's median step time (dot) and the interquartile range of its "
     f"step times relative to the same median (bar), per model, smallest model on top; dashed: the paper's maximum "
     f"GPU overheads and the memory fill's reported share. n = {int(baseline['n_steps'].iloc[0])} timed steps per "
     f"configuration; {overhead_hardware} ({env['cpu_model']}, torch {env['torch']}); batch "
     f"{int(results['batch_size'].iloc[0])} at {int(results['image_size'].iloc[0])}x"
     f"{int(results['image_size'].iloc[0])} pixels, {int(results['num_classes'].iloc[0])} classes.", display=False)

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

# %% tags=["hide-input"]
medium = timed[timed.model.str.startswith("mediumcnn_k")].copy()
medium["k"] = medium["model"].str.removeprefix("mediumcnn_k").astype(int)
for end, row in (("first", medium["k"].min()), ("last", medium["k"].max())):
    glue(f"cost_k_{end}", str(row), display=False)
    for c in ("det_full", "det_no_fill"):
        v = medium.loc[(medium.k == row) & (medium.configuration == c), "overhead_pct"]
        glue(f"cost_k_{end}_{c}", f"{v.iloc[0]:+.1f} %" if len(v) else "n/a", display=False)
if len(medium):
    k_base = alt.Chart(charts.tidy_limit(medium)).encode(
        x=alt.X("k:O", title="kernel size k", axis=alt.Axis(labelAngle=0)), color=color,
        tooltip=["model:N", "configuration:N", alt.Tooltip("overhead_pct:Q", title="overhead %", format="+.1f"),
                 alt.Tooltip("median_ms:Q", title="median step (ms)", format=".1f"),
                 alt.Tooltip("q1_ms:Q", title="IQR low (ms)", format=".1f"),
                 alt.Tooltip("q3_ms:Q", title="IQR high (ms)", format=".1f"),
                 alt.Tooltip("n_steps:Q", title="timed steps")])
    k_chart = alt.layer(
        alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="black").encode(y="y:Q"),
        k_base.mark_line(point=True).encode(y=alt.Y("overhead_pct:Q", title="overhead over the baseline (%)"),
                                            xOffset=alt.XOffset("configuration:N", sort=configs)),
        k_base.mark_rule(strokeWidth=2).encode(y="overhead_lo:Q", y2="overhead_hi:Q",
                                               xOffset=alt.XOffset("configuration:N", sort=configs)),
    ).properties(width=360, height=220, title=f"MediumCNN(k): overhead against kernel size ({overhead_hardware})")
else:
    k_chart = charts.missing_chart(f"no MediumCNN models in the {overhead_hardware} sweep")
glue("fig-determinism-cost-mediumcnn", k_chart, display=False)
glue("fig-determinism-cost-mediumcnn-caption",
     "Overhead of each configuration over the baseline for MediumCNN with kernel size k (dot), with the "
     "interquartile range of its step times relative to the baseline's median (bar). "
     f"n = {int(baseline['n_steps'].iloc[0])} timed steps per configuration; {overhead_hardware}.", display=False)

# %% [markdown]
# ### Across hardware
#
# Every sweep in the overhead store sits under its own hardware label (`cpu-1t` here; a GPU host
# adds `cuda-<gpu>` with `nnrandomness overhead --device cuda --notebook --root data`). The table
# sets the deterministic flag's overhead side by side for every label the store holds, per model;
# {glue:text}`cost_hardware_note`

# %%
sweeps = {}
for manifest_path in sorted(Path(overhead_root, "overhead").glob("*/manifest.json")):
    label = manifest_path.parent.name
    sweeps[label] = overhead.read_results(overhead_root, label)[0].assign(hardware=label)
across = pd.concat(sweeps.values(), ignore_index=True)
across = across[(across.status == "ok") & across.configuration.isin(["det_full", "det_no_fill"])]
across.pivot_table(index="model", columns=["configuration", "hardware"], values="overhead_pct").round(1)

# %% tags=["hide-input"]
glue("cost_hardware_note",
     f"the store holds {len(sweeps)} label(s): {', '.join(sweeps)}."
     + (" Only one so far: the comparison fills in as GPU sweeps are added." if len(sweeps) < 2 else ""),
     display=False)

# %% [markdown]
# ## Operations without a deterministic implementation
#
# Some operations have no deterministic kernel at all: under the flag they raise a
# `RuntimeError` instead of running, and the sweep records the op (`status` "unsupported") and
# goes on. The table joins the ops the sweep hit ({glue:text}`cost_n_unsupported` on
# {glue:text}`cost_hardware`) with the list in the docstring of the installed torch's
# `torch.use_deterministic_algorithms`. Nearly all of them are CUDA-side: their CPU kernels
# are deterministic, which is why no model raises on this CPU. On a GPU, VGG-16 and VGG-19 hit
# one: their `AdaptiveAvgPool2d((7, 7))` has no deterministic CUDA backward. The other models'
# `AdaptiveAvgPool2d((1, 1))` is computed as a mean, which has one. NLLLoss is on the list
# too, so the study's loss (`train.cross_entropy`) is written as one-hot times log-softmax.

# %%
doc = torch.use_deterministic_algorithms.__doc__
section = doc.split("normally-nondeterministic operations will throw a")[1].split("In addition")[0]
items = []  # (op, condition) per bullet; "- mode" sub-bullets join their bullet's condition
for line in section.splitlines()[1:]:
    text = line.strip()
    if text.startswith("* "):
        items.append(text[2:])
    elif text.startswith("- ") and items:
        items[-1] += (" " if items[-1].endswith(":") else ", ") + text[2:]
    elif text and items:
        items[-1] += " " + text
documented = pd.DataFrame([
    {"op": re.sub(r":\w+:`([^`]+)`", r"\1", item).split(" ", 1)[0],
     "condition": re.sub(r":\w+:`([^`]+)`|``", r"\1", item).split(" ", 1)[1] if " " in item else "always",
     "source": f"torch {torch.__version__.split('+')[0]} docs"}
    for item in items
])
documented["device"] = np.where(documented["condition"].str.contains("CUDA"), "CUDA", "any")
study = {"torch.nn.AdaptiveAvgPool2d": "vgg16, vgg19 (7x7 pooling, GPU)",
         "torch.nn.NLLLoss": "avoided: the loss is one-hot x log-softmax"}
documented["in this study"] = documented["op"].map(study).fillna("")
hit = results[results.status == "unsupported"]
swept = pd.DataFrame({"op": hit["unsupported_op"], "condition": hit["error"], "source": f"sweep ({overhead_hardware})",
                      "device": hit["device"], "in this study": hit["model"]})
pd.concat([swept, documented], ignore_index=True).set_index("op")

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

# %%
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

# %% tags=["hide-input"]
th, ulp, impl = reports["threads"], reports["ulp"], reports["impl"]
n_test = int(th.flips["n_test"].sum())
glue("div_model", model, display=False)
glue("div_dataset", dataset, display=False)
glue("div_epochs", str(epochs), display=False)
glue("div_steps_per_epoch", str(th.steps_per_epoch), display=False)
glue("div_threads_a", str(th.replicas["A"]["threads"]), display=False)
glue("div_threads_b", str(th.replicas["B"]["threads"]), display=False)
glue("div_threads_step", str(th.first_step), display=False)
glue("div_threads_op", th.describe_first_op() or "none", display=False)
glue("div_threads_op_index", f"{th.first_op['index']} of {th.traced_ops}" if th.first_op else "n/a", display=False)
glue("div_threads_ops_differ", str(th.differing_ops), display=False)
glue("div_threads_parts", ", ".join(k for k, v in th.first_step_parts.items() if v) or "nothing", display=False)
for name, r in (("threads", th), ("ulp", ulp)):
    first, last = r.history.iloc[1], r.history.iloc[-1]
    glue(f"div_{name}_l2_epoch1", f"{first['weight_l2']:.1e}", display=False)
    glue(f"div_{name}_l2_final", f"{last['weight_l2']:.1e}", display=False)
    glue(f"div_{name}_flips", f"{int(last['n_disagree'])} of {n_test}", display=False)
    glue(f"div_{name}_flips_pct", f"{last['disagreement']:.2%}", display=False)
glue("div_ulp_weight", ", ".join(ulp.initial_difference), display=False)
glue("div_impl_result", "no divergence" if not impl.diverged else f"diverged at step {impl.first_step}", display=False)
glue("div_impl_steps", str(impl.steps_run), display=False)

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

# %% tags=["hide-input"]
history = pd.concat([r.history.assign(factor=name) for name, r in reports.items()], ignore_index=True)
factor_color = alt.Color("factor:N", sort=list(reports), title="factor",
                         scale=alt.Scale(domain=list(reports), range=["#CC79A7", "#000000", "#E69F00"]))
div_tips = ["factor:N", "epoch:Q", "step:Q", alt.Tooltip("weight_l2:Q", title="weight L2", format=".3g"),
            alt.Tooltip("n_disagree:Q", title="predictions that differ"),
            alt.Tooltip("disagreement:Q", title="disagreement", format=".2%"),
            alt.Tooltip("accuracy_a:Q", title="accuracy A", format=".2%"),
            alt.Tooltip("accuracy_b:Q", title="accuracy B", format=".2%")]
l2 = alt.Chart(charts.tidy_limit(history[history.weight_l2 > 0])).mark_line(point=True).encode(
    x=alt.X("epoch:Q", title="epoch"),
    y=alt.Y("weight_l2:Q", scale=alt.Scale(type="log"), title="L2 distance between the weights (log)",
            axis=alt.Axis(format=".0e")),
    color=factor_color, tooltip=div_tips).properties(width=300, height=220, title="Weight distance")
disagree = alt.Chart(charts.tidy_limit(history)).mark_line(point=True).encode(
    x=alt.X("epoch:Q", title="epoch"),
    y=alt.Y("disagreement:Q", title="test predictions that differ", axis=alt.Axis(format=".2%")),
    color=factor_color, tooltip=div_tips).properties(width=300, height=220, title="Prediction disagreement")
glue("fig-determinism-cost-divergence", alt.hconcat(l2, disagree).properties(
    title=f"How far two replicas drift apart ({model} on {dataset})"), display=False)
glue("fig-determinism-cost-divergence-caption",
     "Left: L2 distance between the two replicas' weights after each epoch, on a log scale (a pair whose weights "
     "never differ has no point on it). Right: share of test predictions on which the two replicas "
     f"differ. n = 2 replicas per factor, {th.steps_per_epoch * epochs} steps; cpu, threads "
     f"{th.replicas['A']['threads']} (and {th.replicas['B']['threads']} for replica B under threads); "
     f"{dataset}/{model}.", display=False)

# %% [markdown]
# Which test examples flipped at the end, per class and per subgroup (class x the dataset's
# group attribute, `inverted`): the rows with at least one flipped prediction, for each factor.
# Subgroups with few test examples are where a single flip weighs most.

# %%
flipped = pd.concat([
    (r.subgroups if r.subgroups is not None else r.flips).assign(factor=name) for name, r in reports.items()
], ignore_index=True)
flipped = flipped[flipped.n_flipped > 0]
(flipped.set_index(["factor", "label"] + (["group"] if "group" in flipped else []))
 [["n_test", "n_flipped", "accuracy_a", "accuracy_b"]].round(3)
 if len(flipped) else "no test prediction differs at the end for any factor")
