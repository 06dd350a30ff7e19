"""What the cost chapter shows, computed from a sweep's stored rows (`results.read_results`).

Tables come back as frames ready to display, headline numbers as the strings the prose glues
(percentages as ``+1.2 %``), captions as sentences built from the data (n, hardware, sizes), so
that the chapter only places them.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .timing import BASELINE

# The configurations whose overhead the chapter compares across models, kernel sizes and hardware.
DETERMINISTIC = ("det_full", "det_no_fill")
MEDIUMCNN_PREFIX = "mediumcnn_k"  # MediumCNN(k) is registered as mediumcnn_k<k>
# Ops on torch's list that this study meets, and how (the chapter's table says so beside them).
STUDY_OPS = {
    "torch.nn.AdaptiveAvgPool2d": "vgg16, vgg19: an identity on their 7x7 map at 224 px (models.KerasVGGPool)",
    "torch.nn.NLLLoss": "avoided: the loss is one-hot x log-softmax",
}


def _pct(value: float) -> str:
    return f"{value:+.1f} %"


# ----------------------------------------------------------------------------- one sweep
def baseline_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The baseline's row of each model, indexed by model."""
    return results[results.configuration == BASELINE].set_index("model")


def timed_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The timed rows of the other configurations, with the baseline's median (``baseline_ms``) and
    the configuration's IQR relative to it in % (``overhead_lo``, ``overhead_hi``)."""
    baseline = baseline_rows(results)
    timed = results[(results.status == "ok") & (results.configuration != BASELINE)].copy()
    base_ms = timed["model"].map(baseline["median_ms"])
    timed["overhead_lo"] = (timed["q1_ms"] / base_ms - 1) * 100
    timed["overhead_hi"] = (timed["q3_ms"] / base_ms - 1) * 100
    timed["baseline_ms"] = base_ms
    return timed


def overhead_table(results: pd.DataFrame) -> pd.DataFrame:
    """Model x configuration overhead %, after the baseline's median step time; fastest model first."""
    summary = timed_rows(results).pivot(index="model", columns="configuration", values="overhead_pct")
    summary.insert(0, "baseline median (ms)", baseline_rows(results)["median_ms"])
    return summary.sort_values("baseline median (ms)").round(1)


# What `measures_table` shows, with the column names it shows them under.
MEASURES = {
    "median_ms": "step (ms)",
    "overhead_pct": "step overhead (%)",
    "kernel_ms": "kernel time (ms)",
    "kernel_overhead_pct": "kernel overhead (%)",
    "peak_device_mb": "peak GPU memory (MiB)",
    "peak_host_mb": "peak process memory (MiB)",
    "processes": "processes",
    "note": "note",
    "model_changes": "model changed",
}


def measures_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model and timed configuration: step and kernel time with their overheads, peak memory, the
    processes it was timed in and the notes (det_compile against det_full, model changes). A sweep
    written before a measure existed shows it empty."""
    timed = results[results.status == "ok"]
    table = timed.set_index(["model", "configuration"])[list(MEASURES)].rename(columns=MEASURES)
    numeric = [MEASURES[c] for c in MEASURES if c not in ("note", "model_changes")]
    table[numeric] = table[numeric].apply(pd.to_numeric).round(1)
    return table.dropna(axis=1, how="all")


def method_note(results: pd.DataFrame) -> str:
    """How the sweep was timed, read from its rows (sweeps written before fresh processes have no
    ``processes``): the sentence the chapter glues."""
    processes = pd.to_numeric(results.loc[results.status == "ok", "processes"], errors="coerce").dropna()
    if processes.empty:
        return (
            "every configuration was timed in one process, in blocks interleaved with the baseline's (a sweep "
            "written before each block got a fresh process; on a GPU that would share cuDNN's autotuned plans)"
        )
    return (
        f"every configuration, the baseline too, was timed in {int(processes.max())} fresh processes, one per "
        "interleaved block, each with its own untimed warm-up"
    )


def model_order(results: pd.DataFrame) -> list[str]:
    """The timed models by the baseline's median step time, fastest first (the charts' order)."""
    return baseline_rows(results).loc[timed_rows(results)["model"].unique(), "median_ms"].sort_values().index.tolist()


def _overhead_of(timed: pd.DataFrame, configuration: str) -> pd.Series:
    return timed[timed.configuration == configuration].set_index("model")["overhead_pct"]


def cost_numbers(results: pd.DataFrame) -> dict[str, str]:
    """The prose's numbers of one sweep: sizes, the deterministic overheads (median and range over
    models), the baseline's own IQR as % of its median (the timing noise), bf16's range, the
    configurations recorded as not applicable and the count of unsupported rows."""
    baseline, timed = baseline_rows(results), timed_rows(results)
    det, no_fill, bf16 = (_overhead_of(timed, c) for c in ("det_full", "det_no_fill", "bf16"))
    base_iqr = (baseline["q3_ms"] - baseline["q1_ms"]) / baseline["median_ms"] * 100
    return {
        "n_models": str(results["model"].nunique()),
        "n_steps": str(int(baseline["n_steps"].iloc[0])),
        "det_full_median": _pct(det.median()),
        "det_full_min": _pct(det.min()),
        "det_full_max": _pct(det.max()),
        "det_no_fill_median": _pct(no_fill.median()),
        "baseline_iqr_median": f"{base_iqr.median():.0f} %",
        "baseline_iqr_max": f"{base_iqr.max():.0f} %",
        "bf16_min": _pct(bf16.min()) if len(bf16) else "n/a",
        "bf16_max": _pct(bf16.max()) if len(bf16) else "n/a",
        "not_applicable": ", ".join(sorted(results.loc[results.status == "not_applicable", "configuration"].unique())),
        "n_unsupported": str(int((results.status == "unsupported").sum())),
    }


def overhead_caption(results: pd.DataFrame, manifest: dict, hardware: str) -> str:
    """Caption of the overhead-per-model figure: what is shown, n, hardware, CPU, torch and sizes."""
    env, first = manifest["environment"], results.iloc[0]
    return (
        "Overhead of each configuration over the baseline's median step time (dot) and the interquartile range "
        "of its step times relative to the same median (bar), per model, smallest model on top; dashed: the "
        "paper's maximum GPU overheads and the memory fill's reported share. "
        f"n = {_n_steps(results)} timed steps per configuration; {hardware} ({env['cpu_model']}, torch "
        f"{env['torch']}); batch {int(first['batch_size'])} at {int(first['image_size'])}x"
        f"{int(first['image_size'])} pixels, {int(first['num_classes'])} classes."
    )


def _n_steps(results: pd.DataFrame) -> int:
    return int(baseline_rows(results)["n_steps"].iloc[0])


# ----------------------------------------------------------------------------- MediumCNN(k)
def kernel_size_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The timed rows of the MediumCNN(k) models, with their kernel size ``k``."""
    timed = timed_rows(results)
    medium = timed[timed.model.str.startswith(MEDIUMCNN_PREFIX)].copy()
    medium["k"] = medium["model"].str.removeprefix(MEDIUMCNN_PREFIX).astype(int)
    return medium


def kernel_size_numbers(results: pd.DataFrame) -> dict[str, str]:
    """The smallest and largest k and the deterministic overheads there ("n/a" where not timed)."""
    medium = kernel_size_rows(results)
    out = {}
    for end, k in (("first", medium["k"].min()), ("last", medium["k"].max())):
        out[end] = str(k)
        for c in DETERMINISTIC:
            v = medium.loc[(medium.k == k) & (medium.configuration == c), "overhead_pct"]
            out[f"{end}_{c}"] = _pct(v.iloc[0]) if len(v) else "n/a"
    return out


def kernel_size_caption(results: pd.DataFrame, hardware: str) -> str:
    return (
        "Overhead of each configuration over the baseline for MediumCNN with kernel size k (dot), with the "
        "interquartile range of its step times relative to the baseline's median (bar). "
        f"n = {_n_steps(results)} timed steps per configuration; {hardware}."
    )


# ----------------------------------------------------------------------------- across hardware
def across_hardware(sweeps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Model x (configuration, hardware) overhead % of the deterministic configurations, from
    `results.read_all`."""
    across = pd.concat(sweeps.values(), ignore_index=True)
    across = across[(across.status == "ok") & across.configuration.isin(list(DETERMINISTIC))]
    return across.pivot_table(index="model", columns=["configuration", "hardware"], values="overhead_pct").round(1)


def hardware_note(labels) -> str:
    """The sentence that says which hardware labels the store holds."""
    labels = list(labels)
    return f"the store holds {len(labels)} label(s): {', '.join(labels)}." + (
        " Only one so far: the comparison fills in as GPU sweeps are added." if len(labels) < 2 else ""
    )


# ----------------------------------------------------------------------------- unsupported ops
def _documented_items(doc: str) -> list[str]:
    """The bullets of the "will throw a RuntimeError" list in torch.use_deterministic_algorithms'
    docstring, one string each; "- mode" sub-bullets join their bullet's condition."""
    section = doc.split("normally-nondeterministic operations will throw a")[1].split("In addition")[0]
    items = []
    for line in section.splitlines()[1:]:
        text = line.strip()
        if text.startswith("* "):
            items.append(text[2:])
        elif text.startswith("- ") and items:
            items[-1] += (" " if items[-1].endswith(":") else ", ") + text[2:]
        elif text and items:
            items[-1] += " " + text
    return items


def documented_ops(doc: str, torch_version: str) -> pd.DataFrame:
    """The ops torch documents as throwing under the deterministic flag: op, condition, source,
    device ("CUDA" where the condition names it, else "any") and how this study meets it."""
    documented = pd.DataFrame(
        [
            {
                "op": re.sub(r":\w+:`([^`]+)`", r"\1", item).split(" ", 1)[0],
                "condition": re.sub(r":\w+:`([^`]+)`|``", r"\1", item).split(" ", 1)[1] if " " in item else "always",
                "source": f"torch {torch_version.split('+')[0]} docs",
            }
            for item in _documented_items(doc)
        ]
    )
    documented["device"] = np.where(documented["condition"].str.contains("CUDA"), "CUDA", "any")
    documented["in this study"] = documented["op"].map(STUDY_OPS).fillna("")
    return documented


def unsupported_ops(results: pd.DataFrame, hardware: str, documented: pd.DataFrame) -> pd.DataFrame:
    """The ops the sweep found without a deterministic implementation, then the documented ones."""
    hit = results[results.status == "unsupported"]
    swept = pd.DataFrame(
        {
            "op": hit["unsupported_op"],
            "condition": hit["error"],
            "source": f"sweep ({hardware})",
            "device": hit["device"],
            "in this study": hit["model"],
        }
    )
    return pd.concat([swept, documented], ignore_index=True).set_index("op")


# ----------------------------------------------------------------------------- divergence
# The chapter's second half runs `locate.locate_divergence` live for three factors; these read its
# reports (`locate.DivergenceReport`).
def _drift(report) -> dict[str, str]:
    """Weight distance after the first and the last epoch, and the predictions that differ at the end."""
    first, last = report.history.iloc[1], report.history.iloc[-1]
    n_test = int(report.flips["n_test"].sum())
    return {
        "l2_epoch1": f"{first['weight_l2']:.1e}",
        "l2_final": f"{last['weight_l2']:.1e}",
        "flips": f"{int(last['n_disagree'])} of {n_test}",
        "flips_pct": f"{last['disagreement']:.2%}",
    }


def divergence_numbers(reports: dict) -> dict[str, str]:
    """The prose's numbers of the ``threads``, ``ulp`` and ``impl`` reports: where the thread-count
    pair first parts (step, op, module, what differs), each pair's drift (``threads_l2_final``, ...),
    the weight the ULP pair moved, and whether the IMPL pair parted at all."""
    th, ulp, impl = reports["threads"], reports["ulp"], reports["impl"]
    out = {
        "steps_per_epoch": str(th.steps_per_epoch),
        "threads_a": str(th.replicas["A"]["threads"]),
        "threads_b": str(th.replicas["B"]["threads"]),
        "threads_step": str(th.first_step),
        "threads_op": th.describe_first_op() or "none",
        "threads_op_index": f"{th.first_op['index']} of {th.traced_ops}" if th.first_op else "n/a",
        "threads_ops_differ": str(th.differing_ops),
        "threads_parts": ", ".join(k for k, v in th.first_step_parts.items() if v) or "nothing",
    }
    for name, report in (("threads", th), ("ulp", ulp)):
        out.update({f"{name}_{key}": value for key, value in _drift(report).items()})
    out["ulp_weight"] = ", ".join(ulp.initial_difference)
    out["impl_result"] = "no divergence" if not impl.diverged else f"diverged at step {impl.first_step}"
    out["impl_steps"] = str(impl.steps_run)
    return out


def divergence_caption(reports: dict, epochs: int, dataset: str, model: str) -> str:
    th = reports["threads"]
    return (
        "Left: L2 distance between the two replicas' weights after each epoch, on a log scale (a pair whose "
        "weights never differ has no point on it). Right: share of test predictions on which the two replicas "
        f"differ. n = 2 replicas per factor, {th.steps_per_epoch * epochs} steps; cpu, threads "
        f"{th.replicas['A']['threads']} (and {th.replicas['B']['threads']} for replica B under threads); "
        f"{dataset}/{model}."
    )


def flipped_table(reports: dict) -> pd.DataFrame | str:
    """Per factor, the classes (or class x group subgroups, where the dataset has groups) with at
    least one test prediction that differs at the end; a sentence when there are none."""
    flipped = pd.concat(
        [(r.subgroups if r.subgroups is not None else r.flips).assign(factor=name) for name, r in reports.items()],
        ignore_index=True,
    )
    flipped = flipped[flipped.n_flipped > 0]
    if not len(flipped):
        return "no test prediction differs at the end for any factor"
    index = ["factor", "label"] + (["group"] if "group" in flipped else [])
    return flipped.set_index(index)[["n_test", "n_flipped", "accuracy_a", "accuracy_b"]].round(3)
