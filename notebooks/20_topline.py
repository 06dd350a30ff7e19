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
# (topline)=
# # Top-line: accuracy, churn and weight distance
#
# How different are the replicas of one recipe under each noise setting? This chapter measures
# it three ways, as figures 1 and 2 of {cite:t}`zhuang2022randomness` do: the spread (standard
# deviation) of top-1 test accuracy, **predictive churn** (the share of test examples on which
# two replicas disagree, split into pairs where one replica is right and the other wrong, and
# pairs that are both wrong in different ways), and the L2 distance between the final weights.
# Every number comes with a 95 % bootstrap interval over replicas. Then: whether two settings'
# spreads differ significantly (Brown-Forsythe), what BatchNorm changes, and a check that
# CONTROL replicas are bit-identical, which on the CPU turns out to hold for IMPL as well.

# %%
import altair as alt
import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the main cell
dataset = "digits"  # dataset of the main cell
model = "smallcnn"  # model of the main cell
bn_model = "smallcnn_bn"  # the same network with BatchNorm after each convolution
groups_dataset = "digits_groups"  # dataset with a group attribute (for the findings)
threads_hardware = "cpu-2t"  # the thread-count variant of `hardware` (for the findings)
n_boot = 1000  # bootstrap resamples per confidence interval
seed = 0  # bootstrap seed: fixed, so re-running gives the same intervals

# %% [markdown]
# Every replica of the run store, and one row per cell (hardware, dataset, model, setting) with
# its top-line numbers. The main cell of this chapter is the `dataset`/`model` pair on
# `hardware`; the table below shows it.

# %%
runs = store.load_runs(runs_root)
table = analysis.topline(runs, n_boot=n_boot, seed=seed)
main = table[(table.hardware == hardware) & (table.dataset == dataset) & (table.model == model)]
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %%
pd.DataFrame({
    "setting": main["setting"],
    "replicas": main["n_replicas"],
    "accuracy (mean)": main["acc_mean"].map(findings.pct),
    "accuracy std [95% CI]": findings.ci_text(main, "acc_std"),
    "churn [95% CI]": findings.ci_text(main, "churn"),
    "L2 [95% CI]": findings.ci_text(main, "l2", percent=False),
    "bit-identical": main["identical"],
}).set_index("setting")

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
n_main = int(main["n_replicas"].min()) if len(main) else 0
charts.glue_numbers(findings.prose_values(main))  # algo_churn, ulp_l2, ...: the prose's numbers


# %% [markdown]
# ## Accuracy spread and churn
#
# With every algorithmic source varying and deterministic kernels (ALGO), the replicas' top-1
# accuracy has a standard deviation of {glue:text}`algo_acc_std` around a mean of
# {glue:text}`algo_acc_mean`, yet two replicas disagree on {glue:text}`algo_churn` of the test
# examples: {glue:text}`algo_one_correct` where one of the two is right, and
# {glue:text}`algo_both_wrong` where both are wrong in different ways. Varying one source at
# a time gives a churn of {glue:text}`init_churn` (weight initialisation only, INIT),
# {glue:text}`order_churn` (data order, ORDER), {glue:text}`aug_churn` (augmentation, AUG) and
# {glue:text}`dropout_churn` (dropout masks, DROPOUT). The smallest perturbation of
# all, moving **one weight of the initial model by one unit in the last place** (ULP), gives a
# churn of {glue:text}`ulp_churn` with an accuracy spread of {glue:text}`ulp_acc_std`
# {cite:p}`summers2021nondeterminism`: a difference in the last bit of one of thousands of
# weights survives training and changes predictions.
#
# :::{glue:figure} fig-topline-accuracy-churn
# :name: fig-topline-accuracy-churn
#
# {glue:text}`fig-topline-accuracy-churn-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = (charts.accuracy_churn(main) if len(main)
         else charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store"))
charts.glue_figure("topline", "accuracy-churn", chart,
       "Left: standard deviation of top-1 test accuracy across replicas, per setting (dot), with its 95 % "
       "bootstrap interval (bar). Right: predictive churn, the mean share of test examples on which two "
       "replicas disagree, split into pairs where one replica is right (dark) and pairs where both are wrong "
       "(light), with the interval of the total (black)", n=n_main, hardware=hardware, cell=main_cell)

# %% [markdown]
# ## The weights end up far apart
#
# The replicas' final weights are {glue:text}`algo_l2` apart on average under ALGO
# (L2 distance over all parameters, BatchNorm statistics left out). One ULP moves them
# {glue:text}`ulp_l2` apart. The distance in weight space says the replicas are different
# functions, not the same function with relabelled units; churn says how much of that shows in
# the predictions.
#
# :::{glue:figure} fig-topline-l2
# :name: fig-topline-l2
#
# {glue:text}`fig-topline-l2-caption`
# :::

# %% tags=["hide-input", "remove-output"]
if len(main):
    chart = charts.setting_points(main, "l2", lo="l2_lo", hi="l2_hi", axis_title="mean pairwise L2 distance",
                                  fmt=".1f", title="Distance between the final weights",
                                  tooltip=[alt.Tooltip("n_replicas:Q", title="replicas")]).properties(width=400)
else:
    chart = charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store")
charts.glue_figure("topline", "l2", chart, "Mean L2 distance between the final weights of two replicas "
                   "(BatchNorm running statistics excluded), per setting, with its 95 % bootstrap interval",
                   n=n_main, hardware=hardware, cell=main_cell)

# %% [markdown]
# ## Do two settings' spreads differ?
#
# With ten replicas a standard deviation is itself uncertain. The Brown-Forsythe test (Levene's
# test around the median) asks whether two settings' accuracies spread differently; a small
# p-value says they do. A pair whose replicas have no spread at all on either side has no
# defined statistic (shown as NaN).

# %%
tests = analysis.spread_tests(runs, [("IMPL", "ALGO"), ("ALGO", "ALGO+IMPL"), ("INIT", "ALGO"), ("ULP", "ALGO")])
tests = tests[(tests.hardware == hardware) & (tests.dataset == dataset) & (tests.model == model)]
tests.assign(std_a=tests["std_a"].map(findings.pct), std_b=tests["std_b"].map(findings.pct),
             statistic=tests["statistic"].round(3), pvalue=tests["pvalue"].round(4)).drop(
    columns=["hardware", "dataset", "model"]).reset_index(drop=True)

# %% [markdown]
# ## BatchNorm
#
# The same network with BatchNorm after each convolution ({glue:text}`bn_model`), under the
# paper's four settings. Under ALGO its replicas reach a mean accuracy of
# {glue:text}`bn_algo_acc_mean` (without BatchNorm {glue:text}`algo_acc_mean`), with an accuracy
# spread of {glue:text}`bn_algo_acc_std` (without: {glue:text}`algo_acc_std`) and a churn of
# {glue:text}`bn_algo_churn` (without: {glue:text}`algo_churn`). Read the spread beside the mean:
# a recipe that has not converged is unstable for reasons of its own. For BatchNorm that means
# its running statistics, which the model uses at test time: they follow the training batches
# slowly (momentum 0.99 in the paper's Keras, 0.01 in PyTorch's convention), and after too few
# steps they still remember their initial values. On the 1,438 training digits the default plan
# therefore trains with batches of 64 (23 steps per epoch) rather than the paper's 128.
#
# :::{glue:figure} fig-topline-batchnorm
# :name: fig-topline-batchnorm
#
# {glue:text}`fig-topline-batchnorm-caption`
# :::

# %% tags=["hide-input", "remove-output"]
bn = table[(table.hardware == hardware) & (table.dataset == dataset) & table.model.isin([model, bn_model])
           & table.setting.isin(PAPER_SETTINGS)]
chart = (charts.batchnorm_chart(bn, model, bn_model) if bn.model.nunique() == 2
         else charts.missing_chart(f"needs {model} and {bn_model} on {hardware}/{dataset}"))
charts.glue_figure("topline", "batchnorm", chart,
                   f"Spread of top-1 accuracy and churn of {model} (top) and {bn_model} (bottom) under the "
                   "paper's four settings, with 95 % bootstrap intervals",
                   n=int(bn["n_replicas"].min()) if len(bn) else 0, hardware=hardware,
                   cell=f"{dataset}/{model} and {dataset}/{bn_model}")
# After the figure: JupyterLab shows a cell's first 50 outputs only, and every glued value is one.
glue("bn_model", bn_model, display=False)
charts.glue_numbers(findings.prose_values(bn[bn.model == bn_model], prefix="bn_"))

# %% [markdown]
# ## CONTROL is bit-identical, and on the CPU so is IMPL
#
# CONTROL fixes every seed and asks for deterministic kernels, so its replicas must be
# bit-identical: one hash of the final weights and one of the predictions per cell. The table
# lists every cell of the two settings with fixed seeds.

# %%
ident = analysis.identity(runs)
ident[ident.setting.isin(["CONTROL", "IMPL"])].reset_index(drop=True)

# %% [markdown]
# IMPL fixes the seeds too but allows non-deterministic kernels. On a GPU that makes its replicas
# differ: cuDNN's autotuner (`benchmark=True`) may pick a different convolution algorithm in
# each run, and kernels that accumulate with atomic additions (the backward passes of
# convolutions, scatter and index operations) sum in whatever order the threads finish. On the
# CPU at a fixed thread count the kernels this network uses (convolution, matrix
# multiplication, pooling, element-wise ops and reductions) are deterministic run to run, so
# `torch.use_deterministic_algorithms(False)` changes nothing: each IMPL replica is the CONTROL
# replica, bit for bit, and each ALGO+IMPL replica is the ALGO replica with the same index.
# The CPU's own tooling factor is the **thread count**, which changes how a sum is split between
# threads; {ref}`hardware` measures it.

# %%
analysis.twin_identity(runs)

# %% [markdown]
# ## Findings for the introduction
#
# The headline numbers of the study, glued under the names `finding_<name>` so the
# introduction can quote them (their formats are fixed by `findings.FINDINGS`).

# %%
found = findings.findings(runs, hardware=hardware, dataset=dataset, model=model, groups_dataset=groups_dataset,
                          threads_hardware=threads_hardware, table=table)
shown = findings.format_findings(found)
findings.glue_values(shown, prefix="finding_")
pd.DataFrame({"glue name": [f"finding_{k}" for k in shown], "value": list(shown.values()),
              "meaning": [findings.FINDINGS[k][1] for k in shown]}).set_index("glue name")
