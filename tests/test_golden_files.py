"""The golden fixtures in tests/golden/ are the byte-identical copies that SHA256SUMS records
(copied from the project's shared golden/ and reference/ folders; see tests/golden/README.md)."""
from __future__ import annotations

import hashlib

from golden_paths import IN_REPO

NOT_SUMMED = {"README.md", "SHA256SUMS", ".gitattributes"}


def _sums() -> dict[str, str]:
    sums = {}
    for line in (IN_REPO / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_every_fixture_file_matches_its_sha256():
    sums = _sums()
    present = {p.relative_to(IN_REPO).as_posix() for p in IN_REPO.rglob("*") if p.is_file()} - NOT_SUMMED
    assert present == set(sums), f"unlisted: {sorted(present - set(sums))}, missing: {sorted(set(sums) - present)}"
    for name, digest in sums.items():
        assert hashlib.sha256((IN_REPO / name).read_bytes()).hexdigest() == digest, name


def test_the_fixtures_the_tests_load_are_summed():
    sums = _sums()
    for name in ("sam_med3d_tiny.pt", "sam_tiny.pt", "sam_med2d_tiny.pt", "sam_unet_tiny.pt",
                 "sam_med3d_preproc/img.nii.gz", "sam_med3d_preproc/gt.nii.gz",
                 "sam_med3d_preproc/expected.json", "sam_med3d_preproc/expected.npz",
                 "reference/sam_med3d_turbo_state_dict_shapes.json", "reference/sam_vit_b_state_dict_shapes.json",
                 "reference/sam_med2d_b_state_dict_shapes.json", "reference/sam_unet_state_dict_shapes.json",
                 "reference/sam_unet_res34_state_dict_shapes.json"):
        assert name in sums, name
