"""Prompt files (voxprompt.session.prompts): parsing, the image geometry, ``segment --prompts`` and export -> replay."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_volume import ORIGIN, SIZE_XYZ, SPACING_XYZ, write_cli_files

from voxprompt.cli import main
from voxprompt.errors import PromptError, UsageError
from voxprompt.io.image import Image
from voxprompt.io.read import read_image
from voxprompt.session import Session
from voxprompt.session.prompts import (
    PromptFileError,
    apply_prompts,
    load_prompts,
    parse_csv,
    parse_json,
    resolve_prompts,
    save_prompts,
    session_prompts,
)


def _oblique_image() -> Image:
    """A volume with a flipped, rotated direction: mm <-> IJK is not a plain scaling."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]])
    return Image(np.zeros(SIZE_XYZ[::-1], np.float32), spacing=SPACING_XYZ, origin=ORIGIN, direction=direction)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_cli_files(tmp_path_factory.mktemp("prompts"))


# ----------------------------------------------------------------------------- parsing
def test_json_ijk_order_and_defaults(tmp_path):
    (tmp_path / "m.nii.gz").write_bytes(b"x")
    doc = {"version": 1, "prompts": [
        {"type": "point", "at": [18, 20, 8]},
        {"type": "box", "lo": [8, 10, 4], "hi": [28, 30, 12]},
        {"type": "point", "at": [10, 12, 8], "positive": False},
        {"type": "mask", "path": "m.nii.gz"},
        {"type": "point", "at": [1.5, 2.0, 3.0], "frame": "RAS", "object": 2}]}
    entries = parse_json(json.dumps(doc), "p.json", tmp_path)
    assert [e.kind for e in entries] == ["point", "box", "point", "mask", "point"]
    assert entries[0].values == (18, 20, 8) and entries[0].positive and entries[0].frame == "ijk"
    assert entries[1].values == (8, 10, 4, 28, 30, 12)
    assert not entries[2].positive
    assert entries[3].path == tmp_path / "m.nii.gz"
    assert entries[4].frame == "ras" and entries[4].object == 2 and entries[4].values == (1.5, 2.0, 3.0)
    resolved = resolve_prompts(entries[:3], _oblique_image())
    assert resolved[0].index == (8, 20, 18)  # IJK = (x, y, z): reversed to numpy (z, y, x), as --point
    assert (resolved[1].lo, resolved[1].hi) == ((4, 10, 8), (12, 30, 28))
    assert (resolved[2].index, resolved[2].positive) == ((8, 12, 10), False)


def test_csv_ijk_and_mm(tmp_path):
    img = _oblique_image()
    mm = img.index_to_world(np.array([8.0, 20.0, 18.0]), frame="RAS")
    text = ("# a saved interaction\n"
            "type,x,y,z,positive,x2,y2,z2,frame\n"
            "point,18,20,8,,,,,\n"
            "\n"
            "box,8,10,4,,28,30,12,ijk\n"
            f"point,{float(mm[0])!r},{float(mm[1])!r},{float(mm[2])!r},-,,,,ras\n")
    entries = parse_csv(text, "p.csv")
    assert [e.kind for e in entries] == ["point", "box", "point"]
    assert [e.where for e in entries] == ["p.csv line 3 (point)", "p.csv line 5 (box)", "p.csv line 6 (point)"]
    r = resolve_prompts(entries, img)
    assert r[0].index == (8, 20, 18) and (r[1].lo, r[1].hi) == ((4, 10, 8), (12, 30, 28))
    assert r[2].index == (8, 20, 18) and r[2].positive is False  # mm -> the same voxel through the geometry


@pytest.mark.parametrize("frame", ["lps", "ras"])
def test_mm_round_trips_through_the_geometry(frame):
    img = _oblique_image()
    rng = np.random.default_rng(1)
    for _ in range(20):
        zyx = rng.integers(0, img.shape)
        mm = img.index_to_world(zyx.astype(float), frame=frame.upper())
        doc = {"frame": frame, "prompts": [{"type": "point", "at": mm.tolist()}]}
        assert resolve_prompts(parse_json(json.dumps(doc)), img)[0].index == tuple(zyx)
    lo, hi = np.array([2, 5, 7]), np.array([9, 30, 20])  # a box by its outer corners (voxel edges) in mm
    corners = [img.index_to_world(c - 0.5, frame=frame.upper()).tolist() for c in (hi, lo)]  # any order
    box = resolve_prompts(parse_json(json.dumps({"frame": frame, "prompts": [
        {"type": "box", "lo": corners[0], "hi": corners[1]}]})), img)[0]
    assert (box.lo, box.hi) == (tuple(lo), tuple(hi))


@pytest.mark.parametrize("entry, words", [
    ({"type": "circle", "at": [1, 2, 3]}, "type 'circle'"),
    ({"type": "point", "at": [1, 2]}, "needs 3 values"),
    ({"type": "point", "at": [1, 2, 3], "colour": "red"}, "unknown key(s) 'colour'"),
    ({"type": "point"}, "needs at"),
    ({"type": "point", "at": [1, 2.5, 3]}, "not an integer"),
    ({"type": "point", "at": [1, "a", 3]}, "not a number"),
    ({"type": "point", "at": [1, 2, 3], "positive": "maybe"}, "positive"),
    ({"type": "point", "at": [1, 2, 3], "object": 0}, "object 0"),
    ({"type": "point", "at": [1, 2, 3], "frame": "xyz"}, "frame 'xyz'"),
    ({"type": "box", "lo": [5, 5, 5], "hi": [5, 9, 9]}, "empty"),
    ({"type": "box", "lo": [1, 2, 3, 4, 5, 6], "hi": [7, 8, 9]}, "lo needs 3 values"),
    ({"type": "box", "lo": [1, 2, 3]}, "needs lo and hi"),
    ({"type": "mask", "path": "missing.nii.gz"}, "no such file"),
    ({"type": "mask", "path": "x", "frame": "lps"}, "unknown key(s) 'frame'"),
    ("point", "expected an object"),
])
def test_bad_json_entries_name_the_entry(tmp_path, entry, words):
    doc = {"version": 1, "prompts": [{"type": "point", "at": [1, 2, 3]}, entry]}
    with pytest.raises(PromptFileError) as exc:
        parse_json(json.dumps(doc), "p.json", tmp_path)
    assert "p.json prompts[1]" in str(exc.value) and words in str(exc.value)
    assert isinstance(exc.value, UsageError) and "\n" not in str(exc.value)


def test_nan_and_file_level_errors():
    with pytest.raises(PromptFileError, match=r"prompts\[0\] \(point\): at is nan"):
        parse_json('{"prompts": [{"type": "point", "at": [NaN, 1, 2], "frame": "lps"}]}', "p.json")
    for text, words in [("[1]", "expected a JSON object"), ("{", "not valid JSON"),
                        ('{"version": 2, "prompts": []}', "version 2"), ('{"prompts": []}', "non-empty"),
                        ('{"prompts": [{"type": "point", "at": [1, 2, 3]}], "extra": 1}', "'extra'")]:
        with pytest.raises(PromptFileError, match=words):
            parse_json(text, "p.json")
    for text, words in [("type,x,y,q\n", "header"), ("type,x,y,z\npoint,1,2\n", "line 2: 3 values"),
                        ("type,x,y,z\npoint,nan,2,3\n", "line 2 (point): at is nan"),
                        ("type,x,y,z,path\npoint,1,2,3,a.nii\n", "line 2 (point): a point takes no path"),
                        ("type,x,y,z\n", "no prompts")]:
        with pytest.raises(PromptFileError, match=re.escape(words)):
            parse_csv(text, "p.csv")


def test_data_errors_are_prompt_errors(tmp_path):
    img = _oblique_image()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), str(tmp_path / "small.nii.gz"))
    for entry, words in [({"type": "point", "at": [36, 0, 0]}, "prompts[0] (point): [36, 0, 0] (IJK) is outside"),
                         ({"type": "box", "lo": [0, 0, 0], "hi": [37, 2, 2]}, "prompts[0] (box)"),
                         ({"type": "mask", "path": "small.nii.gz"}, "has size 5x4x3")]:
        entries = parse_json(json.dumps({"prompts": [entry]}), "p.json", tmp_path)
        with pytest.raises(PromptError) as exc:
            resolve_prompts(entries, img)
        assert words in str(exc.value) and not isinstance(exc.value, UsageError)


# ----------------------------------------------------------------------------- the CLI
def _segment(files, name, *extra):
    out = files["dir"] / name
    rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]), *extra])
    assert rc == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def test_segment_prompts_matches_the_point_flags(files, capsys):
    ref = _segment(files, "flags.nii.gz", "--point", "18,20,8", "--point", "10,12,8:-", "--point", "20,22,9")
    assert ref.any()
    doc = {"version": 1, "frame": "ijk", "prompts": [{"type": "point", "at": [18, 20, 8]},
                                                      {"type": "point", "at": [10, 12, 8], "positive": False},
                                                      {"type": "point", "at": [20, 22, 9]}]}
    (files["dir"] / "p.json").write_text(json.dumps(doc))
    np.testing.assert_array_equal(_segment(files, "json.nii.gz", "--prompts", str(files["dir"] / "p.json")), ref)
    img = sitk.ReadImage(str(files["img"]))
    mm = img.TransformIndexToPhysicalPoint((10, 12, 8))  # LPS
    (files["dir"] / "p.csv").write_text(f"type,x,y,z,positive,frame\npoint,18,20,8,+,\n"
                                        f"point,{mm[0]},{mm[1]},{mm[2]},-,lps\npoint,20,22,9,,ijk\n")
    np.testing.assert_array_equal(_segment(files, "csv.nii.gz", "--prompts", str(files["dir"] / "p.csv")), ref)
    # boxes and masks replay in the file's order, as --mask-in, --box, --point do in theirs
    ref = _segment(files, "mixed_flags.nii.gz", "--mask-in", str(files["prior"]), "--box", "8,10,4,28,30,12",
                   "--point", "18,20,8")
    doc = {"prompts": [{"type": "mask", "path": "prior.nii.gz"}, {"type": "box", "lo": [8, 10, 4],
                                                                     "hi": [28, 30, 12]},
                       {"type": "point", "at": [18, 20, 8]}]}
    (files["dir"] / "mixed.json").write_text(json.dumps(doc))
    np.testing.assert_array_equal(_segment(files, "mixed.nii.gz", "--prompts", str(files["dir"] / "mixed.json")),
                                  ref)
    capsys.readouterr()


def test_segment_prompts_errors(files, capsys):
    d = files["dir"]
    (d / "out.json").write_text(json.dumps({"prompts": [{"type": "point", "at": [18, 20, 99]}]}))
    (d / "bad.json").write_text(json.dumps({"prompts": [{"type": "point", "at": [18, 20]}]}))
    (d / "obj.json").write_text(json.dumps({"prompts": [{"type": "point", "at": [18, 20, 8], "object": 2}]}))
    cases = [(["--prompts", str(d / "out.json")], 3, "prompts[0] (point): [18, 20, 99] (IJK) is outside"),
             (["--prompts", str(d / "bad.json")], 2, "prompts[0] (point): at needs 3 values"),
             (["--prompts", str(d / "obj.json")], 2, "object 1 only"),
             (["--prompts", str(d / "none.json")], 2, "cannot read"),
             (["--prompts", str(d / "bad.json"), "--point", "1,2,3"], 2, "cannot be combined with --point")]
    for extra, code, words in cases:
        out = d / "never.nii.gz"
        rc = main(["segment", str(files["img"]), "-o", str(out), "--checkpoint", str(files["ckpt"]), *extra])
        err = capsys.readouterr().err
        assert rc == code and words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    rc = main(["segment", str(d / "slice.png"), "-o", str(d / "never.png"), "--prompts", str(d / "bad.json")])
    assert rc == 2 and "--prompts replays 3D sessions" in capsys.readouterr().err  # 2D: refused, not ignored


def test_help_states_the_prompt_order(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--prompts FILE" in text and "then every --point-mm" in text and "cannot be combined" in text


# ----------------------------------------------------------------------------- export -> replay
@pytest.mark.parametrize("frame", ["ijk", "ras"])
def test_export_then_replay_reproduces_the_session(files, tmp_path, frame):
    image = read_image(files["img"])
    prior = sitk.GetArrayFromImage(sitk.ReadImage(str(files["prior"])))
    s = Session(files["model"], device="cpu")
    s.set_image(image)
    s.add_box((4, 10, 8), (12, 30, 28))
    s.add_point((8, 20, 18))
    s.add_point((8, 12, 10), positive=False)
    s.add_point((9, 22, 20))
    s.undo()  # undone prompts are not saved
    s.new_object()
    s.add_mask(prior)
    s.add_point((6, 15, 12))
    s.add_point((7, 16, 14), positive=False)
    saved = save_prompts(s, tmp_path / "session.json", frame=frame)
    doc = json.loads(saved.read_text())
    assert doc["frame"] == frame and [p["type"] for p in doc["prompts"]] == ["box", "point", "point", "mask",
                                                                             "point", "point"]
    assert [p.get("object", 1) for p in doc["prompts"]] == [1, 1, 1, 2, 2, 2]
    assert (tmp_path / "session.mask1.nii.gz").is_file()
    if frame == "ijk":
        assert doc["prompts"][1]["at"] == [18, 20, 8]

    t = Session(files["model"], device="cpu")
    t.set_image(image)
    pred = apply_prompts(t, load_prompts(saved))
    assert pred is not None and t.object_ids == [1, 2] and t.object_id == 2
    np.testing.assert_array_equal(t.label_map(), s.label_map())
    for oid in (1, 2):
        s.select_object(oid)
        t.select_object(oid)
        assert t.prompts == s.prompts
        np.testing.assert_array_equal(t.mask, s.mask)


def test_session_prompts_needs_prompts_and_mask_names(files):
    s = Session(files["model"], device="cpu")
    with pytest.raises(UsageError, match="no image"):
        session_prompts(s)
    s.set_image(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(UsageError, match="no prompts"):
        session_prompts(s)
    s.add_mask(np.ones((8, 8, 8), bool))
    with pytest.raises(UsageError, match="mask prompt"):
        session_prompts(s)
    assert session_prompts(s, mask_files=["m.nii.gz"])["prompts"] == [{"type": "mask", "path": "m.nii.gz"}]
