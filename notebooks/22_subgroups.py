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
# The CPU stand-in here is `digits_groups`: the digits with a nuisance attribute, *inverted*
# contrast, that is correlated with the label (most even digits are shown inverted, most odd
# digits plain), so that every class has a common and a rare attribute value. For every
# (label, attribute) subgroup this chapter computes, one class against the rest, the false
# negative rate FNR = FN/(FN+TP) (the share of the subgroup's examples the model misses; its
# accuracy on the subgroup is 1 - FNR) and the false positive rate FPR = FP/(FP+TN) (the share
# of the attribute group's *other* examples wrongly given that label), then how much each moves
# across replicas.

# %%
import pandas as pd
from IPython.display import Markdown

from nnrandomness import PAPER_SETTINGS, analysis, charts, findings, store

charts.enable()

# %% tags=["parameters"]
runs_root = "../data/runs"  # the run store, relative to notebooks/
hardware = "cpu-1t"  # hardware label of the cell
dataset = "digits_groups"  # a dataset whose test examples carry a group attribute
model = "smallcnn"  # model of the cell
setting = "ALGO"  # the setting whose replicas the per-replica figure shows
attribute = "inverted"  # name of the group attribute (its values 0 and 1), for labels
rare_share = 0.5  # a subgroup is rare if it holds less than this share of its class's examples

# %%
runs = store.load_runs(runs_root, hardware=hardware, dataset=dataset, model=model)
rates = analysis.subgroup_rates(runs)
subs = analysis.subgroups(runs, rare_share=rare_share, rates=rates)
by_subgroup = analysis.subgroup_noise(runs)
summary = analysis.rare_vs_common(subs)
gaps = analysis.missing(runs, hardware=hardware, dataset=dataset, model=model, settings=PAPER_SETTINGS)
if len(runs.predictions) and not len(rates):
    gaps.append(f"{hardware}/{dataset}/{model}: the test examples carry no group attribute")
Markdown(analysis.missing_note(gaps, runs_root)) if gaps else None

# %% [markdown]
# ## The subgroups
#
# Test examples per (label, attribute) subgroup; the rare one of each class is marked.

# %%
sizes = subs.drop_duplicates(["class", "group"]).assign(
    cell=lambda d: d["n_subgroup"].astype(str) + d["rare"].map({True: " (rare)", False: ""}))
sizes.pivot(index="class", columns="group", values="cell").rename(
    columns=lambda g: f"{attribute}={g}") if len(sizes) else None

# %% tags=["hide-input", "remove-output"]
main_cell = analysis.cell_name(dataset, model)
n = int(subs["n_replicas"].min()) if len(subs) else 0
columns = {"fnr_std": "pct", "fpr_std": "pct", "fnr_mean": "pct", "examples_mean": "2f"}
for kind in ["rare", "common"]:
    charts.glue_numbers(findings.prose_values(summary[summary.subgroups == kind], columns, prefix=f"{kind}_"))
charts.glue_numbers(findings.prose_values(findings.rare_common_ratio(summary), {"ratio": "ratio"}))  # algo_ratio
noise_summary = analysis.subgroup_noise_summary(by_subgroup, subs)
for kind in ["rare", "common"]:
    part = noise_summary[noise_summary.subgroups == kind]
    charts.glue_numbers(findings.prose_values(part, {"fnr_predicted_std": "pct"}, prefix=f"{kind}_"))

# %% [markdown]
# ## Rare subgroups move most
#
# Under ALGO, the false negative rate of a rare subgroup (on average
# {glue:text}`rare_algo_examples_mean` test examples) has a standard deviation across replicas of
# {glue:text}`rare_algo_fnr_std`, averaged over the rare subgroups, against
# {glue:text}`common_algo_fnr_std` for the common ones ({glue:text}`common_algo_examples_mean`
# examples on average): {glue:text}`algo_ratio` times as much. Their mean FNR is
# {glue:text}`rare_algo_fnr_mean` against {glue:text}`common_algo_fnr_mean`. Click a setting in
# the legend to bring its subgroups forward (shift-click adds more).
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
                   "examples in the subgroup (log scale); rare subgroups are triangles", n=n, hardware=hardware,
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
# ## Each replica's rates
#
# The false negative rate of every subgroup in each replica of the setting chosen in the
# parameters. A rare subgroup has only a handful of test examples, so its rate moves in coarse
# steps (with $k$ examples, in steps of $1/k$). That is the first reason it spreads: even if every
# example were an independent coin flip with its own error rate, the FNR of the rare subgroups
# would have a standard deviation of about {glue:text}`rare_algo_fnr_predicted_std` under ALGO
# (common: {glue:text}`common_algo_fnr_predicted_std`). The spread beyond that is the replicas
# disagreeing about the subgroup as a whole.
#
# :::{glue:figure} fig-subgroups-replicas
# :name: fig-subgroups-replicas
#
# {glue:text}`fig-subgroups-replicas-caption`
# :::

# %% tags=["hide-input", "remove-output"]
one = rates[rates.setting == setting].merge(subs[["setting", "class", "group", "rare"]],
                                            on=["setting", "class", "group"])
chart = (charts.subgroup_replicas(one, attribute, setting) if len(one)
         else charts.missing_chart(f"no {setting} runs with a group attribute for {hardware}/{main_cell}"))
charts.glue_figure("subgroups", "replicas", chart,
                   f"False negative rate of each (label, attribute) subgroup, one tick per {setting} replica; rare "
                   "subgroups in orange", n=int(one["replica"].nunique()) if len(one) else 0, hardware=hardware,
                   cell=main_cell)
