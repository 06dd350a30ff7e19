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
import altair as alt
import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

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

# %% tags=["hide-input"]
main_cell = analysis.cell_name(dataset, model)
n = int(subs["n_replicas"].min()) if len(subs) else 0
columns = {"fnr_std": "pct", "fpr_std": "pct", "fnr_mean": "pct", "examples_mean": "2f"}
for kind in ["rare", "common"]:
    part = summary[summary.subgroups == kind]
    for name, text in findings.prose_values(part, columns, prefix=f"{kind}_").items():
        glue(name, text, display=False)
for name, text in findings.prose_values(findings.rare_common_ratio(summary), {"ratio": "ratio"}).items():  # algo_ratio
    glue(name, text, display=False)
rare_noise = by_subgroup.merge(subs[["setting", "class", "group", "rare"]], on=["setting", "class", "group"])
noise_summary = rare_noise.groupby(["setting", "rare"], as_index=False)[["fnr_observed_std", "fnr_predicted_std"]].mean()
for kind, flag in [("rare", True), ("common", False)]:
    part = noise_summary[noise_summary.rare == flag]
    for name, text in findings.prose_values(part, {"fnr_predicted_std": "pct"}, prefix=f"{kind}_").items():
        glue(name, text, display=False)

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

# %% tags=["hide-input"]
if len(subs):
    present = charts.setting_sort(subs["setting"])
    pick = charts.setting_selection("pick_setting")
    shown = subs.assign(subgroup=subs["class"].astype(str) + " / " + attribute + "=" + subs["group"].astype(str),
                        kind=subs["rare"].map({True: "rare", False: "common"}))
    tips = ["setting:N", "subgroup:N", "kind:N", alt.Tooltip("n_subgroup:Q", title="test examples"),
            alt.Tooltip("fnr_mean:Q", title="FNR mean", format=".1%"),
            alt.Tooltip("fnr_std:Q", title="FNR std", format=".1%"),
            alt.Tooltip("fpr_mean:Q", title="FPR mean", format=".2%"),
            alt.Tooltip("fpr_std:Q", title="FPR std", format=".2%"), alt.Tooltip("n_replicas:Q", title="replicas")]
    shape = alt.Shape("kind:N", sort=["rare", "common"], scale=alt.Scale(range=["triangle-up", "circle"]),
                      title="subgroup")
    base = alt.Chart(charts.tidy_limit(shown)).encode(
        opacity=alt.when(pick).then(alt.value(0.9)).otherwise(alt.value(0.08)), tooltip=tips)
    # The legends (and the click selection) belong to the left view; the right one follows it.
    fnr = base.mark_point(filled=True, size=60).add_params(pick).encode(
        color=charts.setting_color(settings=present), shape=shape,
        x=alt.X("n_subgroup:Q", title="test examples in the subgroup", scale=alt.Scale(type="log")),
        y=alt.Y("fnr_std:Q", title="std of FNR across replicas", axis=alt.Axis(format=".0%")),
    ).properties(width=300, title="False negative rate")
    fpr = base.mark_point(filled=True, size=60).encode(
        color=charts.setting_color(settings=present, legend=None), shape=shape.legend(None),
        x=alt.X("n_subgroup:Q", title="test examples in the subgroup", scale=alt.Scale(type="log")),
        y=alt.Y("fpr_std:Q", title="std of FPR across replicas", axis=alt.Axis(format=".1%")),
    ).properties(width=300, title="False positive rate")
    chart = alt.hconcat(fnr, fpr).resolve_legend(color="independent", shape="independent").properties(
        title="Spread of subgroup error rates against subgroup size")
else:
    chart = charts.missing_chart(f"no runs with a group attribute for {hardware}/{main_cell}")
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

# %% tags=["hide-input"]
one = rates[rates.setting == setting].merge(subs[["setting", "class", "group", "rare"]], on=["setting", "class", "group"])
if len(one):
    one = one.assign(subgroup=one["class"].astype(str) + " / " + attribute + "=" + one["group"].astype(str),
                     kind=one["rare"].map({True: "rare", False: "common"}))
    order = one.sort_values(["class", "group"])["subgroup"].unique().tolist()
    chart = alt.Chart(charts.tidy_limit(one[["subgroup", "kind", "replica", "fnr", "n_subgroup", "fn", "tp"]])).mark_tick(
        thickness=2, size=12).encode(
        x=alt.X("fnr:Q", title="false negative rate", axis=alt.Axis(format=".0%")),
        y=alt.Y("subgroup:N", sort=order, title="label / attribute"),
        color=alt.Color("kind:N", sort=["rare", "common"], scale=alt.Scale(range=["#D55E00", "#999999"]),
                        title="subgroup"),
        tooltip=["subgroup:N", "replica:Q", alt.Tooltip("fnr:Q", format=".1%"), alt.Tooltip("fn:Q", title="missed"),
                 alt.Tooltip("n_subgroup:Q", title="test examples")],
    ).properties(width=380, title=f"False negative rate of each subgroup in each {setting} replica")
else:
    chart = charts.missing_chart(f"no {setting} runs with a group attribute for {hardware}/{main_cell}")
charts.glue_figure("subgroups", "replicas", chart,
                   f"False negative rate of each (label, attribute) subgroup, one tick per {setting} replica; rare "
                   "subgroups in orange", n=int(one["replica"].nunique()) if len(one) else 0, hardware=hardware,
                   cell=main_cell)
