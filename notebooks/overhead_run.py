# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
# (overhead-run)=
# # Measuring the cost of determinism
#
# This notebook times one training step (forward, loss, backward, Adam update) of each model under
# named backend configurations, deterministic and not, against the non-deterministic `baseline`,
# with the sweep of `nnrandomness.overhead` (see its docstring: every block runs in a fresh
# process with its own warm-up, blocks are interleaved, kernel time is summed with
# `torch.profiler` and peak memory recorded). It writes tidy rows with the environment
# fingerprint into the overhead store under `overhead/<hardware>/`.
#
# It is the measuring tool behind the overhead chapter, executed with
# [papermill](https://papermill.readthedocs.io) once per hardware label by
# `nnrandomness overhead --plan plans/overhead.yaml --device cpu|cuda --notebook --root data`,
# with the parameters below replaced by the plan's values. As committed it times a tiny CPU preset
# in seconds and writes into a fresh temporary directory, never into the book's data.

# %%
import tempfile

import altair as alt
import pandas as pd

from nnrandomness import charts, environment, overhead

charts.enable()  # offline charts with stable ids

# %% [markdown]
# ## Parameters
#
# One value per line; papermill replaces this cell's values when the runner executes the notebook.

# %% tags=["parameters"]
device = "cpu"  # torch device: cpu, cuda, cuda:1, ...
hardware = ""  # hardware label, a path component of the store; empty: derived from device and threads
models = ["smallcnn", "mediumcnn_k3"]  # names in models.MODELS
configurations = ["baseline", "det_full", "det_no_fill"]  # names in overhead.CONFIGURATIONS (baseline is always timed)
image_size = 16  # square input side, pixels
image_size_per_model = {}  # model -> pixels, for models that need larger inputs (inception_v3: 75)
batch_size = 8  # examples per step
num_classes = 10  # classes of the synthetic task
steps = 2  # timed steps per block
warmup = 1  # untimed steps at the start of every block
repeats = 1  # interleaved blocks per configuration
threads = 1  # torch intra-op CPU threads; None leaves the current count
precision = "fp32"  # baseline precision: fp32, tf32 or bf16
seed = 0  # init and synthetic-batch seed
output_root = ""  # the overhead store's root; empty: a fresh temporary directory

# %%
# Refuse unknown names, wrong types and invalid values before any timing.
sweep_plan = overhead.notebook_plan_from(globals())
hardware = hardware or environment.hardware_label(device, threads)
# A temporary store by default: re-executing this notebook (nbval) never touches data/.
output_root = output_root or tempfile.mkdtemp(prefix="nnrandomness-overhead-")
print(f"hardware label: {hardware}")

# %% [markdown]
# ## The configurations
#
# Configurations whose knobs change nothing on this device type are recorded as not applicable.

# %%
pd.DataFrame(
    [{"configuration": n, "description": overhead.CONFIGURATIONS[n].description}
     for n in dict.fromkeys(["baseline", *configurations])]
).set_index("configuration")

# %% [markdown]
# ## The sweep
#
# One row per model x configuration: the median and quartiles of the step times in ms and the
# overhead % against the baseline, (T_config / T_baseline - 1) x 100, the kernel time per step,
# the peak memory and the fresh processes it was timed in.

# %% tags=["nbval-ignore-output"]
frame = overhead.sweep(sweep_plan, device, progress=False)
frame["hardware"] = hardware
frame[["model", "configuration", "status", "n_steps", "median_ms", "q1_ms", "q3_ms", "overhead_pct", "kernel_ms",
       "peak_host_mb", "peak_device_mb", "processes"]]

# %% tags=["nbval-ignore-output"]
alt.Chart(frame[(frame["status"] == "ok") & (frame["configuration"] != "baseline")]).mark_bar().encode(
    x=alt.X("overhead_pct:Q", title="overhead vs baseline (%)"),
    y=alt.Y("configuration:N", title=None),
    color=alt.Color("configuration:N", legend=None),
    row=alt.Row("model:N", title=None),
).properties(width=320, height=50)

# %% [markdown]
# ## Writing the results
#
# `overhead.write_results` writes `overhead/<hardware>/results.parquet`, then `manifest.json`
# (environment fingerprint, plan, SHA-256 of the Parquet file) last, so an interrupted run reads as
# incomplete. Reading it back checks the checksum.

# %%
overhead.write_results(frame, output_root, plan=sweep_plan)
rows, manifest = overhead.read_results(output_root, hardware)
print(f"overhead/{hardware}/: {manifest['rows']} rows, models {manifest['models']}, "
      f"configurations {sorted(manifest['configurations'])}")
