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
# (hardware)=
# # CPU tooling: configurations, threads and instruction sets
#
# A replica's bits depend on the tooling it ran with, not only on its seeds. On one CPU the
# number of threads splits each sum into other partial sums, and the instruction set torch's
# kernels dispatch to (ATen's CPU capability: AVX-512 by default on our machines, or AVX2) adds
# in other orders. Each such **configuration** is deterministic (run twice, the same bits) but
# different from the others: it is one more hardware label in the run store (`cpu-1t`,
# `cpu-2t-avx2`, ...; a GPU adds a `cuda-...` label), with the same seeds for the same replica
# index. This chapter treats the configurations as a sample of tooling noise: it measures how far
# apart their models end up with the same seeds, and tests whether a change of configuration
# acts like the smallest perturbation the study has (one weight moved by one ULP) and whether
# it rivals the algorithmic randomness (new seeds).

# %%
import pandas as pd
from IPython.display import Markdown, display

from nnrandomness import analysis, charts, findings

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
dataset = "mnist1d"  # dataset of the cells compared
model = "cnn1d"  # model of the cells compared
reference = "cpu-1t"  # the hardware label every other configuration is compared with

# %% [markdown]
# The configurations the store holds for this dataset and model, and the replicas of each
# setting this chapter reads (CONTROL's and ALGO's seeds at every configuration, the one-ULP
# poke at the reference):

# %%
analysis.check_selection(runs_root, dataset=dataset, model=model, hardware=reference)
runs = analysis.load_settings(runs_root, ["CONTROL", "ALGO", "ULP"], dataset=dataset, model=model)
cells = runs.cells()
labels = sorted(cells["hardware"].unique()) if len(cells) else []
needed = analysis.missing(runs, hardware=reference, dataset=dataset, model=model, settings=["CONTROL", "ALGO", "ULP"])
if needed:
    display(Markdown(analysis.missing_note(needed, runs_root)))
shown = cells.pivot_table(index="hardware", columns="setting", values="replicas", aggfunc="sum", fill_value=0)
shown[analysis.setting_order(shown.columns)] if len(cells) else None

# %% [markdown]
# ## Each configuration is deterministic, and each is its own model
#
# CONTROL varies nothing: its replicas share every seed and run deterministic kernels. Within
# each configuration its replicas must be bit-identical; across configurations they are the same
# seeds under other tooling.

# %%
control = runs.select(setting="CONTROL")
summary = analysis.runs_table(control)
pd.DataFrame({
    "configuration": summary["hardware"], "threads": summary["threads"], "replicas": summary["replicas"],
    "bit-identical": summary["identical"].map(lambda v: findings.as_text(v, "flag")),
    "test accuracy": summary["acc_mean"].map(findings.pct),
}).set_index("configuration") if len(summary) else Markdown("No CONTROL replica in the store.")

# %% tags=["remove-cell"]
compare = analysis.hardware_compare(control)
churn = analysis.tooling_churn(runs, dataset=dataset, model=model, reference=reference)
charts.glue_numbers(findings.tooling_values(compare, analysis.identity(control), churn))  # tooling_labels, ...

# %% [markdown]
# CONTROL's replicas are bit-identical within {glue:text}`tooling_identical_within`
# configurations. Between the {glue:text}`tooling_n_labels` configurations
# ({glue:text}`tooling_labels`), the CONTROL models of the {glue:text}`tooling_n_pairs` pairs
# disagree on {glue:text}`tooling_churn_mean` of the test examples on average, from
# {glue:text}`tooling_churn_min` ({glue:text}`tooling_pair_min`) to
# {glue:text}`tooling_churn_max` ({glue:text}`tooling_pair_max`);
# {glue:text}`tooling_identical_pairs` pairs of configurations give the same bits. Every
# configuration trains its own model from the same seeds: the difference starts in the last bit
# of a sum and training amplifies it.
#
# :::{glue:figure} fig-hardware-matrix
# :name: fig-hardware-matrix
#
# {glue:text}`fig-hardware-matrix-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = charts.tooling_matrix(compare) if len(compare) else charts.missing_chart(
    f"no CONTROL cell of {dataset}/{model} under two hardware labels")
n = int(compare["n_matched"].min()) if len(compare) else 0
charts.glue_figure("hardware", "matrix", chart,
                   "Churn between the CONTROL models (the same seeds) of every two tooling configurations; the "
                   "diagonal: churn between the replicas of one configuration", n=n,
                   hardware=", ".join(labels) or "none", cell=f"{analysis.cell_name(dataset, model)}/CONTROL")

# %% [markdown]
# ## A configuration change against a one-ULP poke and against new seeds
#
# Four kinds of churn, each a distribution over many comparisons:
#
# - **configuration, CONTROL's seeds**: CONTROL under each configuration against CONTROL under
#   {glue:text}`tooling_reference`, mean {glue:text}`tooling_mean_control`;
# - **configuration, ALGO's seeds**: ALGO replica $k$ under each configuration against replica
#   $k$ under the reference (the same seeds; only the tooling differs), every replica both hold,
#   mean {glue:text}`tooling_mean_algo`;
# - **one-ULP poke**: each ULP replica (one weight of CONTROL's initial model moved by one unit
#   in the last place) against CONTROL, both under the reference, mean
#   {glue:text}`tooling_mean_ulp`; {glue:text}`tooling_ulp_identical` ULP replicas end with
#   CONTROL's very bits;
# - **ALGO seeds**: two ALGO replicas under the reference, every algorithmic seed different
#   (disjoint pairs, so no replica counts twice), mean {glue:text}`tooling_mean_seeds`.
#
# The first three perturb one model each (the reference's model of the same seeds); the last
# compares independent models.
#
# :::{glue:figure} fig-hardware-tooling
# :name: fig-hardware-tooling
#
# {glue:text}`fig-hardware-tooling-caption`
# :::

# %% tags=["hide-input", "remove-output"]
counts = ", ".join(f"{g}: {k}" for g, k in churn.groupby("group", sort=False).size().items())
if len(churn):
    chart, n = charts.tooling_churn_chart(churn), int(cells["replicas"].min())
else:
    chart, n = charts.missing_chart(f"no tooling comparisons of {dataset}/{model} in {runs_root}"), 0
charts.glue_figure("hardware", "tooling", chart,
                   "Churn of each comparison (a tick each) and each kind's mean (diamond): a tooling configuration "
                   f"against {reference} with CONTROL's and with ALGO's seeds, a one-ULP poke against CONTROL, "
                   f"two ALGO replicas of different seeds (comparisons: {counts or 'none'})", n=n,
                   hardware=", ".join(labels) or "none",
                   cell=analysis.cell_name(dataset, model))

# %% [markdown]
# Permutation tests of the difference in mean churn (two-sided, Holm across the four), each
# with the BCa interval of the difference over the comparisons:

# %%
tests = analysis.tooling_tests(churn)
claims = findings.tooling_claims(tests)
findings.claims_table(claims) if claims else Markdown("No comparison has its runs; nothing to test.")

# %% tags=["remove-cell"]
charts.glue_numbers({**{f"claim_{name}": "n/a (runs missing)" for name, _, _ in analysis.TOOLING_TESTS},
                     **findings.claim_values(claims), "tooling_reference": reference})

# %% [markdown]
# **Does a configuration change act like a one-ULP poke?**
# {glue:text}`claim_tooling_control_vs_ulp`. With ALGO's seeds:
# {glue:text}`claim_tooling_algo_vs_ulp`.
#
# **Does tooling noise rival algorithmic noise on this CPU?**
# {glue:text}`claim_tooling_control_vs_seeds`. With ALGO's seeds:
# {glue:text}`claim_tooling_algo_vs_seeds`.
#
# The verdict is the permutation test's. A kind with a handful of comparisons (one per
# configuration with CONTROL's seeds) gives a bootstrap interval narrower than its 95 % (a BCa
# interval from a few values undercovers), so an interval that misses zero beside a test that
# does not reject says how little a few configurations tell, not that the test missed.
# The comparisons of one kind share their reference model, and the configurations are the few
# this CPU offers, not a random sample of all tooling: the tests say whether these
# configurations' churn and the poke's (or new seeds') come from one distribution, not what any
# other machine would give.

# %% [markdown]
# ## Threads above the core count: the same bits, only slower
#
# A configuration is defined by its thread count, not by how many cores were free: a job with
# more threads than the machine has cores gives the same bits, since torch splits its sums by
# the thread count it is given (the CONTROL replicas above are bit-identical within each
# configuration, however busy the machine was). It only runs slower, so the runner runs such
# jobs alone. The training time each replica's manifest records, per configuration:
#
# :::{glue:figure} fig-hardware-seconds
# :name: fig-hardware-seconds
#
# {glue:text}`fig-hardware-seconds-caption`
# :::

# %% tags=["hide-input", "remove-output"]
times = analysis.tooling_times(runs)
if len(times):
    chart, n = charts.train_seconds_chart(times), int(times["replicas"].min())
    cores = ", ".join(sorted({str(c) for c in times["cpu_count"]}))
else:
    chart, n, cores = charts.missing_chart(f"no replicas of {dataset}/{model} in {runs_root}"), 0, "n/a"
charts.glue_figure("hardware", "seconds", chart,
                   f"Training seconds per replica, median (bar) and range (line), on a machine of {cores} CPU "
                   "cores; CONTROL's, ALGO's and ULP's replicas pooled", n=n, hardware=", ".join(labels) or "none",
                   cell=analysis.cell_name(dataset, model))

# %% [markdown]
# ## What is still to come
#
# A GPU host adds its own label (one per GPU model) when a GPU plan runs, and the same
# comparisons then measure what moving a run from this CPU to a GPU does with identical seeds;
# there IMPL stops being identical to CONTROL (non-deterministic kernels), which on the CPU is a
# limit of the hardware (every CPU kernel here is deterministic), not a finding.
