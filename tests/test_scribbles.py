"""Scribbles and lassos (issue 22): the Session's conversion rules, lasso filling, undo, saved sessions, the label
policy, prompt files, the simulated scribbler and the nnInteractive endpoints through the official client."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from server_testing import BackgroundServer, fix_model_masks, tiny_model

from voxprompt.errors import PromptError, UsageError
from voxprompt.eval.scribbles import (
    Lasso,
    Scribble,
    error_cross_section,
    next_lasso,
    next_scribble,
    run_stroke_protocol,
    session_stroke_fn,
)
from voxprompt.session import Session
from voxprompt.session.prompts import PromptFileError, apply_prompts, load_prompts, parse_csv, parse_json, save_prompts
from voxprompt.session.strokes import Stroke, fill_polygon, lasso_region, lasso_slab, path_voxels

SHAPE = (16, 40, 40)
SPACING = (2.0, 1.0, 1.0)
LINE = [(8, 20, x) for x in range(10, 19)]  # a straight scribble of 9 voxels along x
SQUARE = [(8, 12, 12), (8, 12, 24), (8, 26, 24), (8, 26, 12)]  # a lasso on slice z = 8


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _volume() -> np.ndarray:
    arr = np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    arr[4:12, 10:30, 8:28] += 3
    return arr


def _session(model, **kw) -> Session:
    s = Session(model, refine=False, **kw)
    s.set_image(_volume(), spacing=SPACING)
    return s


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _decodes(monkeypatch) -> list:
    """Record every decoder call of any Session: (ROI points with labels, the logits fed in)."""
    calls = []
    decode = Session._decode

    def spy(self, roi, points_roi, logits, multimask=False):
        calls.append(([int(lab) for _, lab in points_roi], None if logits is None else logits.clone()))
        return decode(self, roi, points_roi, logits, multimask)

    monkeypatch.setattr(Session, "_decode", spy)
    return calls


# ----------------------------------------------------------------------------- geometry
def test_lasso_fills_exactly_the_voxel_centres_inside_or_on_the_outline():
    region = lasso_region(SQUARE, SHAPE)
    want = np.argwhere(_box((8, 12, 12), (9, 27, 25)))
    np.testing.assert_array_equal(region, want)  # the outline's own voxels included
    # a concave (U-shaped) polygon on slice x = 5: its notch stays empty
    u = [(2, 2, 5), (2, 10, 5), (8, 10, 5), (8, 7, 5), (4, 7, 5), (4, 5, 5), (8, 5, 5), (8, 2, 5)]
    got = np.zeros(SHAPE, bool)
    got[tuple(lasso_region(u, SHAPE).T)] = True
    want = np.zeros(SHAPE, bool)
    want[2:9, 2:11, 5] = True
    want[5:9, 6:7, 5] = False  # the notch's inside: rows 5..8 between columns 5 and 7, exclusive
    np.testing.assert_array_equal(got, want)
    # real vertices: the centres strictly inside, by brute force
    tri = np.array([[0.3, 0.4], [9.6, 2.2], [3.1, 8.7]])
    rr, cc = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    sides = [(b[0] - a[0]) * (cc - a[1]) - (b[1] - a[1]) * (rr - a[0]) for a, b in zip(tri, np.roll(tri, -1, 0))]
    inside = np.all([v >= 0 for v in sides], axis=0) | np.all([v <= 0 for v in sides], axis=0)
    assert 10 < inside.sum() < 100
    np.testing.assert_array_equal(fill_polygon(tri, (12, 12)), inside)
    # a vertex on the volume's far edge (size - 0.5) is inside its extent
    assert len(lasso_region([(15.5, 0, 0), (15.5, 5, 0), (15.5, 0, 5)], SHAPE)) == 21


def test_path_voxels_rasterise_a_drawn_path():
    np.testing.assert_array_equal(path_voxels([(5, 2, 2), (5, 2, 6)], SHAPE), [(5, 2, x) for x in range(2, 7)])
    diag = path_voxels([(5, 0, 0), (5, 3, 3), (5, 3, 5)], SHAPE)
    np.testing.assert_array_equal(diag, [(5, 0, 0), (5, 1, 1), (5, 2, 2), (5, 3, 3), (5, 3, 4), (5, 3, 5)])


def test_lasso_slab_thickens_a_one_slice_region_by_half_a_cell():
    region = lasso_region(SQUARE, SHAPE)
    where, block = lasso_slab(region, SHAPE, SPACING, half_mm=5.0)  # 5 mm = 2.5 -> 2 slices of 2 mm each side
    assert where == (slice(6, 11), slice(12, 27), slice(12, 25)) and block.all()


BAD_STROKES = [
    (lambda s: s.add_scribble([]), "holds no voxel"),
    (lambda s: s.add_scribble([(8, 20, 40)]), "outside the volume"),
    (lambda s: s.add_scribble([(8, 20, 4.5)]), "integer voxel indices"),
    (lambda s: s.add_scribble([(8, 20)]), r"\(N, 3\)"),
    (lambda s: s.add_lasso([(8, 2, 2), (9, 2, 8), (8, 8, 8)]), "one slice"),
    (lambda s: s.add_lasso([(8, 2, 2), (8, 2, 8)]), "at least 3 vertices"),
    (lambda s: s.add_lasso([(8, 2, 2), (8, 4, 4), (8, 6, 6)]), "no area"),
    (lambda s: s.add_lasso([(8, 2, 2), (8, 2, 48), (8, 8, 8)]), "outside the volume"),
    (lambda s: s.add_lasso([(8, 2.1, 2.1), (8, 2.2, 2.9), (8, 2.9, 2.2)]), "no voxel centre"),
    (lambda s: s.add_lasso_region(np.zeros((0, 3))), "holds no voxel"),
]


def test_bad_strokes_get_a_prompt_error_and_change_nothing(model):
    s = _session(model)
    s.add_point((8, 20, 18))
    before, prompts = s.mask.copy(), s.prompts
    for call, needle in BAD_STROKES:
        with pytest.raises(PromptError, match=needle):
            call(s)
        np.testing.assert_array_equal(s.mask, before)
        assert s.prompts == prompts and len(s._obj.history) == 1


def test_unknown_rules_are_usage_errors(model):
    with pytest.raises(UsageError, match="scribble rule 'skeleton'"):
        Session(model, scribble_rule="skeleton")
    with pytest.raises(UsageError, match="stroke_points"):
        Session(model, stroke_points=0)
    s = _session(model)
    with pytest.raises(UsageError, match="lasso rule 'fill'; choose one of mask, box, points"):
        s.add_lasso(SQUARE, rule="fill")


# ----------------------------------------------------------------------------- the rules
def test_scribble_rules_make_the_documented_clicks(model, monkeypatch):
    calls = _decodes(monkeypatch)
    s = _session(model, stroke_points=3)
    s.add_scribble(LINE)
    (kind, stroke), = s.prompts
    assert kind == "scribble" and isinstance(stroke, Stroke) and stroke.rule == "points"
    # centre voxel first, then farthest-point sampling: the two ends (ties: first in order)
    assert stroke.clicks == (((8, 20, 14), 1), ((8, 20, 10), 1), ((8, 20, 18), 1))
    assert [labels for labels, _ in calls] == [[1, 1, 1]]  # one model step with all three
    calls.clear()
    s.add_scribble(LINE[:3], positive=False, rule="centre")
    assert s.prompts[-1][1].clicks == (((8, 20, 11), 0),)
    assert [labels for labels, _ in calls] == [[1, 1, 1, 0]]  # with the earlier clicks of the ROI
    calls.clear()
    t = _session(model, stroke_points=3, scribble_rule="sequential")
    t.add_scribble(LINE)
    assert [labels for labels, _ in calls] == [[1], [1, 1], [1, 1, 1]]  # one step per click, logits fed on
    assert calls[0][1] is None and calls[1][1] is not None
    assert len(t._obj.history) == 1  # one undo step
    # the rule's clicks are the object's clicks wherever the session uses them (refinement, clean-up)
    seen = []
    monkeypatch.setattr(Session, "_refined", lambda self, region, block, clicks, cancel=None: seen.append(clicks)
                        or block)
    u = Session(model, refine=True, stroke_points=2)
    u.set_image(_volume(), spacing=SPACING)
    u.add_scribble(LINE)
    assert [(tuple(int(v) for v in p), lab) for p, lab in seen[-1]] == [((8, 20, 14), 1), ((8, 20, 10), 1)]


def test_lasso_rules(model, monkeypatch):
    calls = _decodes(monkeypatch)
    priors = []
    prior = Session(model).predictor.prior.__func__
    monkeypatch.setattr(type(Session(model).predictor), "prior",
                        lambda self, mask, roi: priors.append(mask.copy()) or prior(self, mask, roi))
    region = np.zeros(SHAPE, bool)
    region[tuple(lasso_region(SQUARE, SHAPE).T)] = True
    where, block = lasso_slab(lasso_region(SQUARE, SHAPE), SHAPE, SPACING, _half_cell(model))
    slab = np.zeros(SHAPE, bool)
    slab[where] = block

    s = _session(model, lasso_rule="mask")
    s.add_lasso(SQUARE)
    stroke = s.prompts[-1][1]
    assert stroke.rule == "mask" and stroke.clicks == (((8, 18, 18), 1),)  # the deepest voxel in the plane
    np.testing.assert_array_equal(priors[-1], slab)  # the mask prompt: the region, thickened
    assert calls[-1][0] == [1] and calls[-1][1] is not None
    np.testing.assert_array_equal(np.sort(stroke.voxels, axis=0), np.sort(np.argwhere(region), axis=0))
    mask_before = s.mask.copy()
    s.add_lasso([(8, 14, 14), (8, 14, 20), (8, 20, 20)], positive=False)
    cut = lasso_region([(8, 14, 14), (8, 14, 20), (8, 20, 20)], SHAPE)
    w2, b2 = lasso_slab(cut, SHAPE, SPACING, _half_cell(model))
    want = mask_before.copy()
    want[w2] &= ~b2
    np.testing.assert_array_equal(priors[-1], want)  # a negative lasso cuts its slab out of the mask
    assert s.prompts[-1][1].clicks[0][1] == 0

    b = _session(model, lasso_rule="box")
    b.add_lasso(SQUARE)
    clicks = b.prompts[-1][1].clicks
    # the positive click, then add_box's negatives 2 voxels beyond the in-plane faces of [8:9, 12:27, 12:25]
    assert clicks == (((8, 18, 18), 1), ((8, 9, 18), 0), ((8, 29, 18), 0), ((8, 19, 9), 0), ((8, 19, 27), 0))
    assert calls[-1][0] == [1, 0, 0, 0, 0]

    n = len(priors)
    p = _session(model, stroke_points=4)  # the default rule: points
    p.add_lasso(SQUARE)
    clicks = p.prompts[-1][1].clicks
    assert p.prompts[-1][1].rule == "points"
    assert len(clicks) == 4 and clicks[0] == ((8, 18, 18), 1) and all(lab == 1 for _, lab in clicks)
    assert all(15 <= c[1] <= 23 and 15 <= c[2] <= 21 for c, _ in clicks)  # inside the square's core
    assert len(priors) == n and calls[-1][1] is None  # no mask prompt (a new object: zero logits)


def _half_cell(model) -> float:
    cfg = model.cfg
    return float(cfg.roi_spacing_mm) * cfg.img_size / model.low_res_size / 2


# ----------------------------------------------------------------------------- undo, saving, policy
def test_undo_restores_each_stroke_exactly(model):
    s = _session(model)
    s.add_point((8, 20, 18))
    states = [(s.mask.copy(), s.prompts)]
    s.add_scribble(LINE, positive=False)
    states.append((s.mask.copy(), s.prompts))
    s.add_lasso(SQUARE)
    states.append((s.mask.copy(), s.prompts))
    s.add_lasso_region([(8, 2, 2), (8, 2, 3)], positive=False, rule="points")
    for mask, prompts in reversed(states):
        s.undo()
        np.testing.assert_array_equal(s.mask, mask)
        assert [k for k, _ in s.prompts] == [k for k, _ in prompts]


def test_saved_sessions_keep_strokes(model, tmp_path):
    s = _session(model)
    s.add_scribble(LINE)
    s.add_lasso(SQUARE, rule="box")
    s.add_point((8, 30, 30), positive=False)
    s.add_lasso([(8, 14, 14), (8, 14, 20), (8, 20, 20)], positive=False)
    path = s.save(tmp_path / "s.vps")
    u = _session(model)  # a saved session replays as a prompts file, strokes included
    apply_prompts(u, load_prompts(path))
    np.testing.assert_array_equal(u.mask, s.mask)
    t = Session.load(path, model, _volume(), spacing=SPACING, refine=False)
    for (ka, a), (kb, b) in zip(s.prompts, t.prompts, strict=True):
        assert ka == kb
        if isinstance(a, Stroke):
            np.testing.assert_array_equal(a.voxels, b.voxels)
            assert (a.positive, a.rule, a.clicks) == (b.positive, b.rule, b.clicks)
    np.testing.assert_array_equal(t.add_scribble(LINE[:4]).mask, s.add_scribble(LINE[:4]).mask)
    for _ in range(5):
        np.testing.assert_array_equal(t.undo().mask, s.undo().mask)
    # the stroke's voxels are stored once, as an array member, however many steps hold it
    import zipfile

    names = zipfile.ZipFile(path).namelist()
    assert sum(n.startswith("stroke_") for n in names) == 3


def test_locked_objects_stay_out_of_stroke_results(model, monkeypatch):
    a, b = _box((4, 10, 10), (12, 30, 20)), _box((4, 10, 15), (12, 30, 28))
    fix_model_masks(monkeypatch, {1: a, 2: b})
    s = _session(model, clean=False)
    s.add_scribble(LINE)
    s.lock_object(1)
    s.new_object()
    np.testing.assert_array_equal(s.add_scribble(LINE).mask, b & ~a)
    s.reset()
    np.testing.assert_array_equal(s.add_lasso(SQUARE).mask, b & ~a)
    np.testing.assert_array_equal(s.label_map()[a], 1)


def test_warning_names_a_positive_stroke_outside_the_result(model, monkeypatch):
    fix_model_masks(monkeypatch, {1: _box((0, 0, 0), (2, 2, 2))})
    s = _session(model, clean=False)
    p = s.add_scribble(LINE)
    assert p.low_confidence and "the positive scribble is outside the result" in p.warning


# ----------------------------------------------------------------------------- prompt files
def test_prompt_files_take_scribbles_and_lassos(model, tmp_path):
    doc = {"version": 1, "prompts": [
        {"type": "scribble", "voxels": [[x, y, z] for z, y, x in LINE], "rule": "centre"},
        {"type": "lasso", "polygon": [[x, y, z] for z, y, x in SQUARE]},
        {"type": "lasso", "voxels": [[2, 2, 8], [3, 2, 8]], "positive": False, "rule": "points"},
    ]}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    s = _session(model)
    apply_prompts(s, load_prompts(f))
    t = _session(model)
    t.add_scribble(LINE, rule="centre")
    t.add_lasso(SQUARE)
    want = t.add_lasso_region([(8, 2, 2), (8, 2, 3)], positive=False, rule="points").mask
    np.testing.assert_array_equal(s.mask, want)
    assert [(k, d.rule, d.positive) for k, d in s.prompts] == [("scribble", "centre", True), ("lasso", "points", True),
                                                              ("lasso", "points", False)]
    out = save_prompts(s, tmp_path / "out.json")  # exported (lassos as their filled voxels) and replayed
    u = _session(model)
    apply_prompts(u, load_prompts(out))
    np.testing.assert_array_equal(u.mask, want)


@pytest.mark.parametrize("entry, error, needle", [
    ({"type": "scribble"}, PromptFileError, "needs voxels"),
    ({"type": "scribble", "voxels": [[1, 2, 3]], "rule": "fill"}, PromptFileError, "rule 'fill'"),
    ({"type": "lasso", "polygon": [[1, 2, 3]] * 3, "voxels": [[1, 2, 3]]}, PromptFileError, "not both"),
    ({"type": "lasso", "polygon": [[1, 2, 3], [4, 5, 3]]}, PromptFileError, "at least 3"),
    ({"type": "scribble", "voxels": [[1.5, 2, 3]]}, PromptFileError, "not an integer"),
    ({"type": "lasso", "polygon": [[1, 2, 3], [4, 5, 6], [7, 2, 3]]}, PromptError, "prompts\\[0\\].*one slice"),
    ({"type": "scribble", "voxels": [[1, 2, 99]]}, PromptError, "prompts\\[0\\].*outside the volume"),
])
def test_bad_stroke_entries_name_the_entry(model, tmp_path, entry, error, needle):
    s = _session(model)
    with pytest.raises(error, match=needle):
        apply_prompts(s, parse_json(json.dumps({"prompts": [entry]}), "p.json", tmp_path))
    with pytest.raises(PromptFileError, match="JSON prompts file"):
        parse_csv("type,x,y,z\nscribble,1,2,3\n")


# ----------------------------------------------------------------------------- the simulated scribbler
def test_simulated_scribbles_and_lassos_draw_on_the_error():
    gt = _box((4, 10, 10), (12, 30, 24))
    empty = np.zeros(SHAPE, bool)
    click, section = error_cross_section(empty, gt)
    assert click.label == 1 and section.shape == SHAPE[1:]
    np.testing.assert_array_equal(section, gt[click.index[0]])
    sc = next_scribble(empty, gt, spacing=SPACING)
    assert isinstance(sc, Scribble) and sc.label == 1 and len(sc.voxels) > 1
    assert np.all(sc.voxels[:, 0] == click.index[0]) and gt[tuple(sc.voxels.T)].all()
    assert np.all((sc.voxels[:, 1] >= 13) & (sc.voxels[:, 1] <= 26))  # the medial core, not the corners
    la = next_lasso(empty, gt, tolerance=0)
    assert isinstance(la, Lasso) and la.label == 1
    filled = np.zeros(SHAPE, bool)
    filled[tuple(lasso_region(la.polygon, SHAPE).T)] = True
    np.testing.assert_array_equal(filled, gt & (np.arange(SHAPE[0]) == click.index[0])[:, None, None])
    over = gt | _box((4, 10, 24), (12, 30, 34))  # a false positive larger than the rest of the error
    assert next_lasso(over, gt).label == 0 and next_scribble(over, gt).label == 0
    assert next_scribble(gt, gt) is None and next_lasso(gt, gt) is None


def test_stroke_protocol_scores_each_step(model):
    gt = _box((4, 10, 8), (12, 30, 28))
    seen = []

    def oracle(act):  # perfect after the second interaction
        seen.append(act)
        return gt if len(seen) == 2 else np.zeros(SHAPE, bool)

    res = run_stroke_protocol(oracle, gt, "lasso", 4, SPACING)
    assert len(seen) == 2 and res.dice[:1] == [0.0] and res.dice[1:] == [1.0] * 3 and res.final_dice == 1.0
    s = _session(model)
    res = run_stroke_protocol(session_stroke_fn(s), gt, "scribble", 2, SPACING)
    assert len(res.dice) == 2 and [k for k, _ in s.prompts] == ["scribble", "scribble"]
    with pytest.raises(UsageError, match="simulated user"):
        run_stroke_protocol(oracle, gt, "brush")


# ----------------------------------------------------------------------------- nnInteractive
remote = pytest.importorskip("nnInteractive.inference.remote")


def test_nninteractive_scribble_and_lasso_through_the_official_client(model):
    from voxprompt.server import ServerSettings, create_app

    vol = _volume()
    local = Session(model)
    local.set_image(vol, spacing=SPACING)
    with BackgroundServer(create_app(ServerSettings(), model=model)) as url, \
            remote.nnInteractiveRemoteInferenceSession(url) as c:
        assert c.supported_interactions["scribble"] is True and c.supported_interactions["lasso"] is True
        c.set_image(vol[None], {"spacing": list(SPACING)})
        buf = np.zeros(SHAPE, np.uint8)
        c.set_target_buffer(buf)
        # a scribble as a crop placed by interaction_bbox (what napari / Slicer send)
        crop = np.zeros((1, 3, 12), np.uint8)
        crop[0, 1, 1:10] = 1  # voxels (8, 20, 10..18)
        bbox = c.add_scribble_interaction(crop, include_interaction=True, interaction_bbox=[[8, 9], [19, 22], [9, 21]])
        pred = local.add_scribble(LINE)
        np.testing.assert_array_equal(buf, pred.mask.astype(np.uint8))
        assert buf.any() and bbox == [[s.start, s.stop] for s in pred.changed_bbox]
        # a filled lasso, the whole image (no interaction_bbox), negative
        region = np.zeros(SHAPE, np.uint8)
        region[8, 14:20, 14:20] = 1
        c.add_lasso_interaction(region, include_interaction=False)
        np.testing.assert_array_equal(buf, local.add_lasso_region(np.argwhere(region), positive=False).mask)
        # queued with run_prediction=False, run by the next prediction; undo drops a queued one first
        c.add_lasso_interaction(region, include_interaction=True, run_prediction=False)
        c.add_scribble_interaction(crop, include_interaction=True, run_prediction=False,
                                   interaction_bbox=[[8, 9], [19, 22], [9, 21]])
        assert c.undo() is True  # the queued scribble
        before = buf.copy()
        c.add_point_interaction([8, 25, 20], include_interaction=True)
        local.add_lasso_region(np.argwhere(region))
        np.testing.assert_array_equal(buf, local.add_point((8, 25, 20)).mask.astype(np.uint8))
        assert not np.array_equal(buf, before)
        assert c.undo() is True
        np.testing.assert_array_equal(buf, local.undo().mask.astype(np.uint8))
        assert [k for k, _ in local.prompts] == ["scribble", "lasso", "lasso"]

        token = {"X-Lease-Token": c._lease_token}
        from voxprompt.server.protocols import nnia

        def bad(path, arr, meta, needle):
            r = httpx.post(f"{url}{path}", content=nnia.pack(arr), headers={
                **token, "X-Meta": json.dumps(meta), "Content-Type": "application/octet-stream"})
            assert r.status_code == 400 and needle in r.json()["detail"], r.text

        yes = {"include_interaction": True}
        bad("/add_scribble_interaction", np.zeros(SHAPE, np.uint8), yes, "holds no voxel")
        bad("/add_scribble_interaction", crop, yes, "send interaction_bbox")
        bad("/add_lasso_interaction", crop, {**yes, "interaction_bbox": [[8, 9], [19, 22], [9, 20]]}, "size of")
        bad("/add_lasso_interaction", crop, {**yes, "interaction_bbox": [[15, 16], [38, 41], [0, 12]]}, "outside")
        bad("/add_lasso_interaction", crop, {**yes, "interaction_bbox": "all"}, "[[lo, hi] x 3]")
        bad("/add_lasso_interaction", crop, {"interaction_bbox": None}, "include_interaction")
