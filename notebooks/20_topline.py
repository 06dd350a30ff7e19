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
# deviation) of top-1 test accuracy, **predictive {term}`churn`** (the share of test examples on
# which two replicas disagree, split into pairs where one replica is right and the other wrong,
# and pairs that are both wrong in different ways), and the {term}`L2 distance` between the
# final weights. Every number comes with a 95 % interval: chi-square and Bonett intervals for a
# standard deviation, BCa bootstrap intervals over replicas for churn and L2. Which differences
# between settings are real is decided by {term}`permutation tests <permutation test>` with a
# {term}`Holm correction` across the chapter's comparisons. Then: how churn grows with training
# length, what BatchNorm and an MLP change, and which settings are bit-identical.

# %%
import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the main cell
dataset = "mnist1d"  # dataset of the main cell
model = "cnn1d"  # model of the main cell
bn_model = "cnn1d_bn"  # the same network with BatchNorm
mlp_model = "mlp1d"  # a multilayer perceptron on the same data
n_boot = 2000  # bootstrap resamples per confidence interval
n_test = 2000  # permutations (and bootstrap resamples) per test
seed = 0  # bootstrap and permutation seed: fixed, so re-running gives the same numbers

# %% [markdown]
# The replicas of `dataset` on `hardware` (with the predictions after each stored epoch), and
# one row per cell (hardware, dataset, model, setting) with its top-line numbers. The table shows
# the main cell, `dataset`/`model`.

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=dataset, model=[model, bn_model, mlp_model])
runs = store.load_runs(runs_root, snapshots=True, hardware=hardware, dataset=dataset)
cell = {"hardware": hardware, "dataset": dataset, "model": model}
table = analysis.topline(runs, n_boot=n_boot, seed=seed).merge(analysis.sd_intervals(runs), how="left")
main = table[table.model == model]
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %%
pd.DataFrame({
    "setting": main["setting"],
    "replicas": main["n_replicas"],
    "accuracy (mean)": main["acc_mean"].map(findings.pct),
    "accuracy SD [chi-square]": findings.sd_ci_text(main, "chi2"),
    "accuracy SD [Bonett]": findings.sd_ci_text(main, "bonett"),
    "churn [BCa]": findings.ci_text(main, "churn"),
    "L2 [BCa]": findings.ci_text(main, "l2", percent=False),
    "bit-identical": main["identical"],
}).set_index("setting")

# %% tags=["remove-cell"]
main_cell = analysis.cell_name(dataset, model)
n_main = int(main["n_replicas"].max()) if len(main) else 0  # the caption names the settings with fewer
few = findings.few_replicas_note(main)
charts.glue_numbers({**findings.prose_values(main), **findings.interval_values(main)})  # algo_churn_ci, ...


# %% [markdown]
# ## Accuracy spread and churn
#
# With every algorithmic source varying and deterministic kernels ({term}`ALGO`), the replicas'
# top-1 accuracy has a mean of {glue:text}`algo_acc_mean` and a standard deviation of
# {glue:text}`algo_acc_std_ci` (95 % chi-square interval in brackets), and two replicas disagree
# on {glue:text}`algo_churn_ci` of the test examples (BCa interval): {glue:text}`algo_one_correct`
# where one of the two is right, {glue:text}`algo_both_wrong` where both are wrong in different
# ways. Varying one {term}`source <single source>` at a time gives a churn of
# {glue:text}`init_churn_ci` (weight initialisation only, INIT), {glue:text}`order_churn_ci` (data
# order, ORDER), {glue:text}`aug_churn_ci` (augmentation, AUG) and {glue:text}`dropout_churn_ci`
# (dropout masks, DROPOUT). Moving **one weight of the initial model by one unit in the last
# place** ({term}`ULP`), with every seed fixed, gives a churn of {glue:text}`ulp_churn_ci` and an
# accuracy spread of {glue:text}`ulp_acc_std_ci` {cite:p}`summers2021nondeterminism`. Which of
# these differ is tested below.
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
                   "Left: standard deviation of top-1 test accuracy across replicas, per setting (dot), with its "
                   "95 % chi-square interval (bar). Right: predictive churn, the mean share of test examples on "
                   "which two replicas disagree, split into pairs where one replica is right (dark) and pairs where "
                   "both are wrong (light), with the 95 % BCa bootstrap interval over replicas of the total "
                   "(black)" + few,
                   n=n_main, hardware=hardware, cell=main_cell)

# %% [markdown]
# ## Distance between the final weights
#
# The replicas' final weights are {glue:text}`algo_l2_ci` apart on average under ALGO
# (L2 distance over all parameters, BatchNorm statistics left out, BCa interval). One ULP moves
# them {glue:text}`ulp_l2_ci` apart. The distance in weight space says the replicas are different
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
                                  tooltip=[charts.REPLICAS_TOOLTIP]).properties(width=400)
else:
    chart = charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store")
charts.glue_figure("topline", "l2", chart, "Mean L2 distance between the final weights of two replicas "
                   "(BatchNorm running statistics excluded), per setting, with its 95 % BCa bootstrap interval "
                   "over replicas" + few, n=n_main, hardware=hardware, cell=main_cell)

# %% [markdown]
# ## Which differences are established
#
# A difference between two settings' churn, or between their spreads of accuracy, counts as
# established only when a permutation test rejects it at 5 % after the Holm correction across
# this section's comparisons: each single source against ALGO and every pair of single sources
# (churn), and every setting's accuracy SD against ALGO's (the log ratio of the SDs). Each row
# gives the effect (a minus b, in percentage points) with its 95 % BCa interval over replicas.

# %%
tested = analysis.churn_tests(runs, cell, n=n_test, seed=seed)
sd_tested = analysis.sd_tests(runs, cell, n=n_test, seed=seed)
claims = findings.claims_from_tests(tested) + findings.claims_from_tests(sd_tested)
findings.compact_claims_table(claims)

# %% tags=["remove-cell"]
findings.glue_values({**findings.intro_claim_values(claims, ["churn_init_vs_algo", "churn_order_vs_algo",
                                                             "churn_aug_vs_algo", "churn_dropout_vs_algo",
                                                             "sd_ulp_vs_algo"]),
                      "topline_undecided": findings.undecided_text(claims)})

# %% [markdown]
# In words, from the tests: {glue:text}`claim_churn_init_vs_algo`;
# {glue:text}`claim_churn_order_vs_algo`; {glue:text}`claim_churn_aug_vs_algo`;
# {glue:text}`claim_churn_dropout_vs_algo`. For the spread of accuracy:
# {glue:text}`claim_sd_ulp_vs_algo`. {glue:text}`topline_undecided`

# %% [markdown]
# ## Churn against training length
#
# Is the churn of one ULP a matter of training too briefly? Each replica also stored its test
# predictions after epochs 1, 2, 5 and 10 of its 20. Per epoch, the churn of every setting with
# its BCa interval, and how many ULP replicas predict every test example exactly as CONTROL does
# (CONTROL's replicas are bit-identical), with its Clopper-Pearson interval.

# %%
epochs = analysis.churn_by_epoch(runs, cell, n_boot=n_boot, seed=seed)
shown = epochs.assign(churn=findings.ci_text(epochs, "churn"), same=[
    f"{k:.0f} of {r} [{findings.pct(lo, 0)}, {findings.pct(hi, 0)}]" if pd.notna(k) else "n/a"
    for k, r, lo, hi in zip(epochs["n_same"], epochs["n_replicas"], epochs["same_lo"], epochs["same_hi"])])
None if epochs.empty else shown.pivot(index="epoch", columns="setting", values="churn").reindex(
    columns=analysis.setting_order(epochs["setting"])).join(
    shown[shown.setting == "ULP"].set_index("epoch")["same"].rename("ULP replicas = CONTROL [95 % CI]"))

# %% tags=["hide-input", "remove-output"]
chart = (charts.churn_epochs_chart(epochs) if len(epochs)
         else charts.missing_chart(f"no runs of {hardware}/{main_cell} in the store"))
charts.glue_figure("topline", "churn-epochs", chart,
                   "Left: predictive churn after each stored epoch per setting, with its 95 % BCa bootstrap "
                   "interval over replicas. Right: the share of ULP replicas whose test predictions equal CONTROL's "
                   "after that epoch, with its 95 % Clopper-Pearson interval",
                   n=int(epochs["n_replicas"].max()) if len(epochs) else 0, hardware=hardware,
                   cell=main_cell)
ulp_claims = findings.claims_from_tests(analysis.ulp_tests(runs, cell, n=n_test, seed=seed))
findings.glue_values(findings.intro_claim_values(ulp_claims, ["churn_ulp_vs_algo", "ulp_returns_to_control"]))

# %% [markdown]
# :::{glue:figure} fig-topline-churn-epochs
# :name: fig-topline-churn-epochs
#
# {glue:text}`fig-topline-churn-epochs-caption`
# :::
#
# At the final epoch, tested: {glue:text}`claim_churn_ulp_vs_algo`. And
# {glue:text}`claim_ulp_returns_to_control`.

# %% [markdown]
# ## BatchNorm and an MLP
#
# The same data under ALGO with two other networks: the 1D CNN with BatchNorm
# ({glue:text}`bn_model`) and a multilayer perceptron ({glue:text}`mlp_model`), against the main
# cell's {glue:text}`main_model`. Read the spread beside the mean: a recipe that has not
# converged is unstable for reasons of its own. Whether their churn differs from the main
# model's is a permutation test, Holm across the two comparisons.

# %%
arch = table[table.model.isin([model, bn_model, mlp_model]) & (table.setting == "ALGO")]
pd.DataFrame({
    "model": arch["model"],
    "replicas": arch["n_replicas"],
    "accuracy (mean)": arch["acc_mean"].map(findings.pct),
    "accuracy SD [chi-square]": findings.sd_ci_text(arch, "chi2"),
    "accuracy SD [Bonett]": findings.sd_ci_text(arch, "bonett"),
    "churn [BCa]": findings.ci_text(arch, "churn"),
}).set_index("model")

# %%
arch_claims = findings.architecture_claims(
    analysis.architecture_tests(runs, cell, [bn_model, mlp_model], n=n_test, seed=seed))
findings.compact_claims_table(arch_claims)

# %% tags=["remove-cell"]
arch_worded = findings.claim_values(arch_claims)
glue_arch = {"bn_model": bn_model, "mlp_model": mlp_model, "main_model": model,
             "claim_bn_churn": arch_worded.get(f"claim_churn_{bn_model}_vs_{model}_algo", findings.MISSING_CLAIM),
             "claim_mlp_churn": arch_worded.get(f"claim_churn_{mlp_model}_vs_{model}_algo", findings.MISSING_CLAIM)}
findings.glue_values(glue_arch)

# %% [markdown]
# From the tests: {glue:text}`claim_bn_churn`; {glue:text}`claim_mlp_churn`.

# %% [markdown]
# ## Bit identity: CONTROL, and on the CPU IMPL too
#
# CONTROL fixes every seed and asks for deterministic kernels, so its replicas must be
# bit-identical: one hash of the final weights and one of the predictions per cell. IMPL fixes the
# seeds too but allows non-deterministic kernels, and ALGO+IMPL is ALGO with them. The table lists
# every cell of the settings that fix their seeds or differ from another only by the kernels.

# %%
ident = analysis.identity(runs)
ident[ident.setting.isin(["CONTROL", "IMPL", "ALGO+IMPL"])].reset_index(drop=True)

# %% [markdown]
# Each IMPL replica against the CONTROL replica with the same seeds, and each ALGO+IMPL replica
# against the ALGO replica with the same index:

# %%
twins = analysis.twin_identity(runs)
glue("impl_twins", findings.twin_text(twins), display=False)
twins

# %% [markdown]
# **A limit of the CPU, not a finding.** On a GPU, non-deterministic kernels make IMPL replicas
# differ: cuDNN's autotuner (`benchmark=True`) may pick a different convolution algorithm in each
# run, and kernels that accumulate with atomic additions (the backward passes of convolutions,
# scatter and index operations) sum in whatever order the threads finish. On the CPU at a fixed
# {term}`tooling configuration` (thread count and instruction set) the kernels these networks use
# (convolution, matrix multiplication, pooling, element-wise ops and reductions) are
# deterministic run to run, so `torch.use_deterministic_algorithms(False)` changes nothing. In
# this store: {glue:text}`impl_twins` Where all are, IMPL adds nothing on the CPU: it cannot be
# measured there at all.
# When the store holds GPU runs, the same code fills the IMPL rows with replicas that differ. The
# CPU's own tooling factors are the thread count and the instruction set, each deterministic on
# its own; {ref}`hardware` measures them.
