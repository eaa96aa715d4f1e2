"""Saved sessions (issue 22): ``Session.save`` / ``load_state`` put back every object, its undo history and the
label policy, so the next prompt and undo give bitwise what they would have given without saving."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from server_testing import tiny_model

from voxprompt.errors import InputError, SessionFileError, UsageError
from voxprompt.session import Session
from voxprompt.session.saved import read_state

SHAPE = (16, 40, 40)
SPACING = (2.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def model():
    """The tiny model with mask_in_chans 16: at 4 its mask encoder's one-channel LayerNorm erases the
    previous logits, and a lost prior would go unnoticed."""
    return _sensitive_model()


def _sensitive_model():
    import torch

    from voxprompt.models.loading import load_model

    base = tiny_model(seed=0).cfg.to_dict()
    torch.manual_seed(0)
    return load_model("voxprompt-med3d-small", pretrained=False, config={**base, "mask_in_chans": 16})


def _volume() -> np.ndarray:
    arr = np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    arr[4:12, 10:30, 8:28] += 3
    return arr


def _session(model, arr=None, spacing=SPACING) -> Session:
    s = Session(model, refine=False, clean=True)
    s.set_image(_volume() if arr is None else arr, spacing=spacing)
    return s


def _worked(model) -> Session:
    """Two objects: clicks (one negative, one outside the first ROI), a box, a mask prompt; object 1 locked."""
    s = _session(model)
    s.add_point((8, 20, 18))
    s.add_point((8, 12, 10), positive=False)
    s.add_point((8, 36, 36))  # may open a new ROI: undo then restores the first one
    s.lock_object(1)
    s.new_object()
    s.add_box((5, 12, 12), (11, 30, 30))
    s.add_point((7, 22, 22))
    m = np.zeros(SHAPE, bool)
    m[6:10, 14:20, 14:20] = True
    s.new_object()
    s.add_mask(m)
    s.add_point((8, 16, 16))
    s.select_object(2)
    s.others_negative = True
    return s


def _same_state(a: Session, b: Session) -> None:
    assert a.object_ids == b.object_ids and a.object_id == b.object_id
    assert a.locked_objects == b.locked_objects and a.others_negative == b.others_negative
    np.testing.assert_array_equal(a.label_map(), b.label_map())
    for oid in a.object_ids:
        x, y = a._objects[oid], b._objects[oid]
        np.testing.assert_array_equal(x.mask, y.mask)
        assert x.prompts == y.prompts and len(x.history) == len(y.history) and x.score == y.score


def _same_prediction(p, q) -> None:
    np.testing.assert_array_equal(p.mask, q.mask)
    assert p.score == q.score and p.changed_bbox == q.changed_bbox and p.object_id == q.object_id
    if p.probabilities is None:
        assert q.probabilities is None
    else:
        np.testing.assert_array_equal(p.probabilities, q.probabilities)


def test_a_loaded_session_clicks_and_undoes_exactly_like_the_saved_one(model, tmp_path):
    a = _worked(model)
    path = a.save(tmp_path / "s.vps")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    b = _session(model)
    b.load_state(path)
    _same_state(a, b)
    _same_prediction(a.add_point((8, 24, 24)), b.add_point((8, 24, 24)))  # object 2, under the policy
    a.select_object(1)
    b.select_object(1)
    _same_prediction(a.add_point((8, 22, 20)), b.add_point((8, 22, 20)))  # a 4th click in object 1's ROI
    for oid in a.object_ids:  # every step back, on every object
        a.select_object(oid)
        b.select_object(oid)
        while a.can_undo:
            _same_prediction(a.undo(), b.undo())
        assert not b.can_undo
    _same_state(a, b)
    c = Session.load(path, model, _volume(), spacing=SPACING, refine=False, clean=True)  # the one-call form
    assert c.locked_objects == [1] and c.object_id == 2 and c.others_negative


def test_the_file_is_plain_arrays_and_json(model, tmp_path):
    path = _worked(model).save(tmp_path / "s.vps")
    with np.load(path, allow_pickle=False) as z:  # no pickle: loading runs no code
        assert all(z[k].dtype != object for k in z.files)
        assert z["o1_mask"].dtype == np.uint8  # bit-packed
    manifest, _ = read_state(path)
    assert manifest["format"] == "voxprompt-session" and manifest["version"] == 1
    assert manifest["image"]["shape"] == list(SHAPE) and len(manifest["image"]["sha256"]) == 64
    assert [o["id"] for o in manifest["objects"]] == [1, 2, 3] and manifest["locked"] == [1]
    assert [p["type"] for p in manifest["objects"][1]["prompts"]] == ["box", "point"]


@pytest.mark.parametrize("change, words", [
    ("voxel", "other voxel values (sha256 differs)"),
    ("spacing", "another spacing: (1.0, 1.0, 2.0) there, (1.0, 1.0, 3.0) here"),
    ("shape", "shape (16, 40, 40) there, (16, 40, 39) here"),
    ("dtype", "dtype float32 there, float64 here"),
])
def test_another_image_is_refused_and_nothing_changes(model, tmp_path, change, words):
    path = _worked(model).save(tmp_path / "s.vps")
    arr, spacing = _volume(), SPACING
    if change == "voxel":
        arr[0, 0, 0] += 1e-3
    elif change == "spacing":
        spacing = (3.0, 1.0, 1.0)
    elif change == "shape":
        arr = arr[:, :, :39]
    else:
        arr = arr.astype(np.float64)
    s = _session(model, arr, spacing)
    before = s.add_point((8, 20, 18)).mask.copy()
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        s.load_state(path)
    assert s.object_ids == [1] and s.prompts == [("point", ((8, 20, 18), True))]
    np.testing.assert_array_equal(s.mask, before)


def test_broken_files_are_typed_errors(model, tmp_path):
    path = _worked(model).save(tmp_path / "s.vps")
    data = path.read_bytes()
    s = _session(model)
    (tmp_path / "cut.vps").write_bytes(data[: len(data) // 2])
    with pytest.raises(SessionFileError, match="cut.vps: not a readable saved session"):
        s.load_state(tmp_path / "cut.vps")
    with pytest.raises(SessionFileError, match="cannot read"):
        s.load_state(tmp_path / "none.vps")
    (tmp_path / "text.vps").write_text("{}")
    with pytest.raises(SessionFileError, match="not a readable saved session"):
        s.load_state(tmp_path / "text.vps")
    manifest, arrays = read_state(path)
    _rewrite(tmp_path / "v2.vps", {**manifest, "version": 2}, arrays)
    with pytest.raises(SessionFileError, match="format version 2; this voxprompt reads version 1"):
        s.load_state(tmp_path / "v2.vps")
    bad = json.loads(json.dumps(manifest))
    bad["objects"][0]["history"][0]["bbox"] = [[0, 99], [0, 1], [0, 1]]
    _rewrite(tmp_path / "bbox.vps", bad, arrays)
    with pytest.raises(SessionFileError, match="malformed"):
        s.load_state(tmp_path / "bbox.vps")
    assert s.object_ids == [1] and s.prompts == []  # nothing half-applied
    with pytest.raises(UsageError, match="set_image"):
        Session(model).load_state(path)


def _rewrite(path, manifest, arrays) -> None:
    members = {"manifest": np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays}
    with open(path, "wb") as f:
        np.savez_compressed(f, **members)
    assert zipfile.is_zipfile(path)


def test_save_waits_for_a_background_refinement(model, tmp_path):
    pytest.importorskip("skimage")
    s = Session(model, refine=True, clean=False, refine_background=True)
    s.set_image(_volume(), spacing=SPACING)
    s.add_point((8, 20, 18))
    path = s.save(tmp_path / "s.vps")
    assert not s.refining
    b = _session(model)
    b.load_state(path)
    np.testing.assert_array_equal(b.mask, s.mask)  # the refined mask, not the fast one


# ----------------------------------------------------------------------------- replaying a saved session
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from cli_volume import write_cli_files

    return write_cli_files(tmp_path_factory.mktemp("saved_cli"))


def test_segment_replays_a_saved_session_like_the_flags(files, capsys):
    import SimpleITK as sitk

    from voxprompt.cli import main
    from voxprompt.io.read import read_image
    from voxprompt.session.prompts import apply_prompts, load_prompts

    d = files["dir"]
    image = read_image(files["img"])
    s = Session(files["model"])
    s.set_image(image)
    s.add_mask(read_image(files["prior"]).array != 0)
    s.add_box((4, 10, 8), (12, 30, 28))  # IJK 8,10,4 .. 28,30,12
    s.add_point((8, 20, 18))
    s.add_point((8, 12, 10), positive=False)
    s.undo()  # undone prompts are not replayed
    path = s.save(d / "case.vps")

    def segment(name, *extra):
        rc = main(["segment", str(files["img"]), "-o", str(d / name), "--checkpoint", str(files["ckpt"]), *extra])
        assert rc == 0
        return sitk.GetArrayFromImage(sitk.ReadImage(str(d / name)))

    ref = segment("flags.nii.gz", "--mask-in", str(files["prior"]), "--box", "8,10,4,28,30,12", "--point", "18,20,8")
    assert ref.any()
    np.testing.assert_array_equal(segment("saved.nii.gz", "--prompts", str(path)), ref)
    np.testing.assert_array_equal(s.mask, ref != 0)
    again = Session(files["model"])  # the same replay in Python
    again.set_image(image)
    apply_prompts(again, load_prompts(path))
    np.testing.assert_array_equal(again.mask, s.mask)
    capsys.readouterr()


def test_segment_refuses_a_saved_session_of_another_image_or_with_more_objects(files, capsys):
    import SimpleITK as sitk

    from voxprompt.cli import main
    from voxprompt.io.read import read_image

    d = files["dir"]
    s = Session(files["model"])
    s.set_image(read_image(files["img"]))
    s.add_point((8, 20, 18))
    one = s.save(d / "one.vps")
    s.new_object()
    s.add_point((8, 12, 10))
    two = s.save(d / "two.vps")
    other = sitk.ReadImage(str(files["img"]))
    other.SetSpacing((1.0, 1.0, 9.0))
    sitk.WriteImage(other, str(d / "other.nii.gz"))
    (d / "cut.vps").write_bytes(one.read_bytes()[:200])
    cases = [(files["img"], two, 2, "object 2: segment writes one mask"),
             (d / "other.nii.gz", one, 3, "one.vps was saved on an image with another spacing"),
             (files["img"], d / "cut.vps", 3, "cut.vps: not a readable saved session")]
    for img, prompts, code, words in cases:
        out = d / "never.nii.gz"
        rc = main(["segment", str(img), "-o", str(out), "--checkpoint", str(files["ckpt"]), "--prompts", str(prompts)])
        err = capsys.readouterr().err
        assert rc == code and words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
