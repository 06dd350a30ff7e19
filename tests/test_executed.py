"""Executed notebooks: what is stripped, what is kept, and how the file is written."""

from __future__ import annotations

import json

import nbformat

from nnrandomness import executed


def papermill_notebook() -> dict:
    """A notebook as papermill writes it: run timings and paths, nbclient's timestamps, a random id."""
    return {
        "metadata": {
            "papermill": {
                "start_time": "t",
                "end_time": "t",
                "duration": 1.0,
                "input_path": "/a",
                "output_path": "/b",
                "parameters": {"epochs": 3},
                "version": "2.7.0",
            },
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
        "cells": [
            {
                "id": "random-1",
                "cell_type": "code",
                "execution_count": 1,
                "source": ["epochs = 3"],
                "metadata": {
                    "tags": ["injected-parameters"],
                    "execution": {"iopub.status.busy": "t"},
                    "papermill": {"start_time": "t", "end_time": "t", "duration": 0.1, "status": "completed"},
                },
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}],
            },
        ],
    }


def test_strip_notebook_keeps_results_only():
    out = executed.strip(papermill_notebook())
    assert out["metadata"]["papermill"] == {"parameters": {"epochs": 3}, "version": "2.7.0"}
    cell = out["cells"][0]
    assert cell["id"] == "injected-parameters" and "execution" not in cell["metadata"]
    assert cell["metadata"]["papermill"] == {"status": "completed"}
    assert cell["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]


def test_strip_without_parameters_drops_papermills_metadata_and_widget_state():
    nb = papermill_notebook()
    nb["metadata"]["widgets"] = {"state": {"random-model-id": {}}}
    nb["cells"][0]["metadata"]["ExecuteTime"] = {"end_time": "t"}
    out = executed.strip(nb, parameters=False)
    assert set(out["metadata"]) == {"kernelspec", "language_info"}
    assert out["cells"][0]["metadata"] == {"tags": ["injected-parameters"]}


def test_second_papermill_cell_of_a_tag_gets_a_numbered_id():
    nb = papermill_notebook()
    nb["cells"].append({**nb["cells"][0], "id": "random-2"})
    assert [c["id"] for c in executed.strip(nb)["cells"]] == ["injected-parameters", "injected-parameters-1"]


def test_read_gives_none_for_an_absent_or_truncated_notebook(tmp_path):
    assert executed.read(tmp_path / "absent.ipynb") is None
    cut = tmp_path / "cut.ipynb"
    cut.write_text(json.dumps(papermill_notebook())[:50])  # killed while papermill was saving
    assert executed.read(cut) is None
    assert executed.keep(cut, tmp_path / "kept.ipynb") is None and not (tmp_path / "kept.ipynb").exists()


def test_json_and_nbformat_nodes_give_the_same_text():
    """papermill's JSON has sources as lists of lines, nbformat's nodes as strings: one text for both."""
    nb = executed.strip(papermill_notebook())
    text = executed.dumps(nb)
    assert text.endswith("}\n")
    assert text == json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    assert executed.dumps(nbformat.reads(text, as_version=4)) == text


def test_write_is_atomic_and_only_when_the_text_changes(tmp_path):
    target = tmp_path / "sub" / "run.ipynb"
    nb = executed.strip(papermill_notebook())
    assert executed.write(nb, target) is True
    assert json.loads(target.read_text()) == nb
    mtime = target.stat().st_mtime_ns
    assert executed.write(nb, target) is False and target.stat().st_mtime_ns == mtime
    nb["cells"][0]["outputs"][0]["text"] = ["bye\n"]
    assert executed.write(nb, target) is True and "bye" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["run.ipynb"]  # no temporary file left


def test_keep_strips_and_writes_what_papermill_wrote(tmp_path):
    source, target = tmp_path / "out.ipynb", tmp_path / "executed" / "job.ipynb"
    source.write_text(json.dumps(papermill_notebook()))
    assert executed.keep(source, target) is not None
    kept = json.loads(target.read_text())
    assert kept["metadata"]["papermill"] == {"parameters": {"epochs": 3}, "version": "2.7.0"}
    assert kept["cells"][0]["id"] == "injected-parameters"
