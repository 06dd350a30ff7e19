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
# (subgroups)=
# # Subgroups: the rare group
#
# Figure 4 of {cite:t}`zhuang2022randomness` follows error rates on CelebA subgroups (hair
# colour by gender) and finds that the rarest subgroup's rates move most between replicas.
# The CPU stand-in here is `mnist1d_groups`: MNIST-1D with a nuisance attribute, *shifted*
# (the signal moved up by a constant), that is correlated with the label in training (most
# even digits shifted, most odd digits plain), so that every class has a common and a rare
# attribute value in training; every test subgroup holds hundreds of examples. For every
# (label, attribute) subgroup this chapter computes, one class against the rest, the false
# negative rate FNR = FN/(FN+TP) (the share of the subgroup's examples the model misses; its
# accuracy on the subgroup is 1 - FNR) and the false positive rate FPR = FP/(FP+TN) (the share
# of the attribute group's *other* examples wrongly given that label), then how much each moves
# across replicas, and whether the rare subgroups move more than independent examples would
# make them.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import analysis, charts, findings, load_dataset, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "mnist1d_groups"  # a dataset whose examples carry a group attribute
model = "cnn1d"  # model of the cell
attribute = "shifted"  # name of the group attribute (its values 0 and 1), for labels
rare_share = 0.5  # a subgroup is rare if it holds less than this share of its class's TRAINING examples

# %%
# A name the store lacks stops here, listing what it holds (a typo would otherwise show empty tables).
analysis.check_selection(runs_root, hardware=hardware, dataset=dataset, model=model)
runs = store.load_runs(runs_root, hardware=hardware, dataset=dataset, model=model)
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=["ALGO", "CONTROL"])
try:  # rare by design: in training (the test set may hold every subgroup in equal shares)
    train = load_dataset(dataset)
    rare = analysis.rare_subgroups(train.y_train.numpy(), train.g_train.numpy(), rare_share)
except (FileNotFoundError, ValueError, AttributeError) as e:
    rare = None
    gaps.append(f"{dataset}: no training split with a group attribute ({str(e).splitlines()[0]}); rare by test shares")
rates = analysis.subgroup_rates(runs)
subs = analysis.subgroups(runs, rare_share=rare_share, rates=rates)
if rare is not None:
    subs["rare"] = [(int(c), int(g)) in rare for c, g in zip(subs["class"], subs["group"])]
summary = analysis.rare_vs_common(subs)
if len(runs.predictions) and not len(rates):
    gaps.append(f"{hardware}/{dataset}/{model}: the test examples carry no group attribute")
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %% [markdown]
# ## The subgroups
#
# Test examples per (label, attribute) subgroup; the subgroup that is rare in training is marked.

# %%
sizes = subs.drop_duplicates(["class", "group"]).assign(
    cell=lambda d: d["n_subgroup"].astype(str) + d["rare"].map({True: " (rare)", False: ""}))
sizes.pivot(index="class", columns="group", values="cell").rename(
    columns=lambda g: f"{attribute}={g}") if len(sizes) else None

# %% tags=["remove-cell"]
main_cell = analysis.cell_name(dataset, model)
n = int(subs["n_replicas"].max()) if len(subs) else 0
columns = {"fnr_std": "pct", "fpr_std": "pct", "fnr_mean": "pct", "examples_mean": "2f"}
for kind in ["rare", "common"]:
    charts.glue_numbers(findings.prose_values(summary[summary.subgroups == kind], columns, prefix=f"{kind}_"))
charts.glue_numbers(findings.prose_values(findings.rare_common_ratio(summary), {"ratio": "ratio"}))  # algo_ratio

# %% [markdown]
# ## How much each subgroup moves
#
# Under ALGO, the false negative rate of a rare subgroup (on average
# {glue:text}`rare_algo_examples_mean` test examples) has a standard deviation across replicas of
# {glue:text}`rare_algo_fnr_std`, averaged over the rare subgroups, against
# {glue:text}`common_algo_fnr_std` for the common ones ({glue:text}`common_algo_examples_mean`
# examples on average): a ratio of {glue:text}`algo_ratio`. Their mean FNR is
# {glue:text}`rare_algo_fnr_mean` against {glue:text}`common_algo_fnr_mean`. Whether either is
# more than chance is the next section's question.
#
# :::{glue:figure} fig-subgroups-fnr-spread
# :name: fig-subgroups-fnr-spread
#
# {glue:text}`fig-subgroups-fnr-spread-caption`
# :::

# %% tags=["hide-input", "remove-output"]
chart = (charts.subgroup_spread(subs, attribute) if len(subs)
         else charts.missing_chart(f"no runs with a group attribute for {hardware}/{main_cell}"))
charts.glue_figure("subgroups", "fnr-spread", chart,
                   "Standard deviation across replicas of each (label, attribute) subgroup's false negative rate "
                   "(left) and false positive rate (right, one class against the rest), against the number of test "
                   "examples in the subgroup (log scale); triangles: rare in training", n=n, hardware=hardware,
                   cell=main_cell)

# %% [markdown]
# The averages over rare and over common subgroups, for every setting:

# %%
pd.DataFrame({
    "setting": summary["setting"], "subgroups": summary["subgroups"], "how many": summary["n_subgroups"],
    "examples (mean)": summary["examples_mean"].round(1), "FNR mean": summary["fnr_mean"].map(findings.pct),
    "FNR std": summary["fnr_std"].map(findings.pct), "FPR std": summary["fpr_std"].map(findings.pct),
}).set_index(["setting", "subgroups"])

# %% [markdown]
# ## More than independent examples would give?
#
# A subgroup's FNR moves even if every example is an independent coin flip, right in each
# replica at its own observed rate: with $k$ examples it moves in steps of $1/k$, and a subgroup
# with more hard examples moves more. The null model simulates exactly that (per subgroup, a
# Poisson-binomial count of right examples in each simulated replica). Three tests per setting,
# adjusted together with Holm: the ratio of the rare subgroups' mean FNR SD to the common ones'
# (do rare subgroups move *more, relative to* the common ones, than chance gives?), and the mean
# FNR SD of the rare and of the common subgroups each against its own null (does each family
# move more than its own examples would make it?). Per test: the observed statistic, the null's
# median and central 95 % range, the excess over the median with its 95 % interval (BCa over
# replicas) and the one-sided p-value.

# %%
cell = {"hardware": hardware, "dataset": dataset, "model": model}
present = analysis.setting_order(subs["setting"].unique())
tests = analysis.subgroup_null_tests(runs, cell, settings=present, rare=rare, rare_share=rare_share)
claims = findings.null_claims(tests)
findings.null_table(tests, claims)

# %% tags=["remove-cell"]
absent = f"no ALGO runs of {hardware}/{main_cell} with 3 or more replicas and both kinds of subgroup"
charts.glue_numbers({"claim_subgroup_ratio_algo": absent, "claim_subgroup_rare_algo": absent,
                     "claim_subgroup_common_algo": absent} | findings.claim_values(claims))

# %% [markdown]
# {glue:text}`claim_subgroup_ratio_algo`. {glue:text}`claim_subgroup_rare_algo`.
# {glue:text}`claim_subgroup_common_algo`.
#
# Per subgroup, the observed spread against its own null:
#
# :::{glue:figure} fig-subgroups-null
# :name: fig-subgroups-null
#
# {glue:text}`fig-subgroups-null-caption`
# :::

# %% tags=["hide-input", "remove-output"]
groups = analysis.spread_null_groups(runs, cell, settings=present, by_subgroup=True, rare=rare, rare_share=rare_share)
groups = groups.assign(name=groups["class"].astype(str) + " / " + attribute + "=" + groups["attribute"].astype(str))
chart = (charts.null_range_chart(groups, label="label / attribute", title="Subgroup FNR spread against "
                                 "independent examples") if len(groups)
         else charts.missing_chart(f"no setting of {hardware}/{main_cell} with 3 or more replicas"))
charts.glue_figure("subgroups", "null", chart,
                   "Standard deviation across replicas of each (label, attribute) subgroup's false negative rate "
                   "(dark; triangles: rare in training) against what independent examples give (grey bar: central "
                   "95 % of the simulated sets of replicas; tick: median)",
                   n=int(groups["n_replicas"].max()) if len(groups) else 0, hardware=hardware, cell=main_cell)
