"""``pancreas export`` over an earlier export replaces only the files its record lists, unchanged: a file
a user put inside ``assets/`` or ``variables/`` (or one export wrote and the user edited) is named in a
one-line refusal and the folder is left as it was (issue 18, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import run_dir  # noqa: F401 - the fixture: a run folder with both checkpoints


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("user_file", "why"),
    [
        ("assets/vocab.txt", "is not a file that export wrote"),
        ("variables/NOTES.txt", "is not a file that export wrote"),
        ("assets/mine/deep.txt", "is a folder that export did not write"),
        ("README.txt", "was changed since export wrote it"),  # export's own file, edited by the user
    ],
)
def test_a_user_file_inside_an_earlier_export_is_named_and_the_folder_left_untouched(
    run_dir,  # noqa: F811 - the imported fixture
    tmp_path,
    user_file,
    why,
):
    from pancreas.cli import main
    from training.export import ExportError, export_run

    out = tmp_path / "serving"
    export_run(run_dir, out, "last")
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_text("the user's own words\n")
    before = _tree(out)
    shown = user_file.rsplit("/", 1)[0] if "folder" in why else user_file
    with pytest.raises(ExportError, match=f"{out}: {shown} {why}; .*move {shown} out of {out}"):
        export_run(run_dir, out, "best")
    assert _tree(out) == before  # the user's file kept, the earlier export not replaced
    assert not [p for p in tmp_path.iterdir() if p.name != "serving"]  # no temporary left beside it

    assert main(["export", "--model", str(run_dir), "--out", str(out)]) == 2  # the CLI: one line, rc 2
    assert _tree(out) == before


def test_a_plain_re_export_over_an_untouched_earlier_export_replaces_it(run_dir, tmp_path):  # noqa: F811
    from training.export import EXPORT_RECORD, export_run, holds_export

    out = tmp_path / "serving"
    assert not export_run(run_dir, out, "last").replaced
    record = json.loads((out / EXPORT_RECORD).read_text(encoding="utf-8"))
    files = _tree(out)
    assert set(record["files"]) == set(files) - {EXPORT_RECORD, ".pancreas.lock"}
    assert {"saved_model.pb", "variables/variables.index", "README.txt", "input_contract.json"} <= set(record["files"])
    assert all(record["files"][rel]["size"] == len(files[rel]) for rel in record["files"])

    summary = export_run(run_dir, out, "best")
    assert summary.replaced and json.loads((out / EXPORT_RECORD).read_text(encoding="utf-8"))["checkpoint"] == "best"
    assert export_run(run_dir, out, "best").replaced  # and again, over the second one
    assert holds_export(out)


def test_a_record_without_its_file_list_is_not_taken_for_an_export(tmp_path):
    """No export ever wrote a record without ``files``: such a folder is refused, never replaced."""
    import json

    from training.export import EXPORT_RECORD, ExportError, holds_export

    out = tmp_path / "serving"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"someone's model")
    (out / EXPORT_RECORD).write_text(json.dumps({"signature": "s", "checkpoint": "best", "model_fingerprint": "f"}))
    with pytest.raises(ExportError, match="lists its files wrongly"):
        holds_export(out)
    assert (out / "saved_model.pb").read_bytes() == b"someone's model"
