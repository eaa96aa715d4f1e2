"""2D image reading (PNG, JPEG, TIFF, DICOM single/multi-frame) and 2D mask writing."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from io2d_files import phantom, write_dicom
from PIL import Image as PILImage

from voxprompt.errors import ImageReadError, InputError, UsageError
from voxprompt.io.image2d import count_frames, image2d_from_array, is_2d_file, read_frames, read_image2d, write_mask2d


def test_png_jpeg_grey_rgb_16bit(tmp_path):
    grey, _ = phantom()
    PILImage.fromarray(grey).save(tmp_path / "g.png")
    PILImage.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "c.jpg", quality=95)
    PILImage.fromarray(grey.astype(np.uint16) * 200).save(tmp_path / "w.png")
    g = read_image2d(tmp_path / "g.png")
    assert g.array.shape == (60, 80) and g.array.dtype == np.uint8 and np.array_equal(g.array, grey)
    c = read_image2d(tmp_path / "c.jpg")
    assert c.array.shape == (60, 80, 3) and c.shape == (60, 80)
    w = read_image2d(tmp_path / "w.png")
    assert w.array.dtype == np.uint16 and int(w.array.max()) == int(grey.max()) * 200
    assert is_2d_file(tmp_path / "g.png") and not is_2d_file(tmp_path)
    assert count_frames(tmp_path / "g.png") == 1


def test_tiff_single_multi_and_planar(tmp_path):
    grey, _ = phantom()
    tifffile.imwrite(tmp_path / "one.tif", grey.astype(np.float32))
    stack = np.stack([grey, grey // 2, grey // 3])
    tifffile.imwrite(tmp_path / "multi.tiff", stack, photometric="minisblack")
    rgb = np.stack([grey, grey // 2, grey // 4], -1)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert read_image2d(tmp_path / "one.tif").array.dtype == np.float32
    assert count_frames(tmp_path / "multi.tiff") == 3
    with pytest.raises(ImageReadError, match="3 frames"):
        read_image2d(tmp_path / "multi.tiff")
    assert np.array_equal(read_image2d(tmp_path / "multi.tiff", frame=1).array, grey // 2)
    vol = read_frames(tmp_path / "multi.tiff")
    assert vol.shape == (3, 60, 80) and np.array_equal(vol.array, stack)
    assert np.array_equal(read_image2d(tmp_path / "planar.tif").array, rgb)


def test_dicom_single_and_multi_frame_in_hu(tmp_path):
    raw = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    write_dicom(tmp_path / "one.dcm", raw, spacing=(0.7, 0.8))
    write_dicom(tmp_path / "multi.dcm", np.stack([raw, raw + 5, raw + 9]), thickness=2.5)
    write_dicom(tmp_path / "inv.dcm", raw, intercept=0.0, photometric="MONOCHROME1")
    one = read_image2d(tmp_path / "one.dcm")
    assert one.modality == "CT" and one.spacing == (0.7, 0.8)
    assert float(one.array[0, 0]) == -1024.0 and float(one.array[-1, -1]) == 40 * 50 - 1 - 1024
    assert count_frames(tmp_path / "multi.dcm") == 3
    vol = read_frames(tmp_path / "multi.dcm")
    assert vol.shape == (3, 40, 50) and vol.spacing == (0.8, 0.7, 2.5)
    assert float(vol.array[2, 0, 0]) == 9 - 1024
    assert float(read_image2d(tmp_path / "multi.dcm", frame=1).array[0, 0]) == 5 - 1024
    with pytest.raises(UsageError, match="frame 3 does not exist"):
        read_image2d(tmp_path / "multi.dcm", frame=3)
    inv = read_image2d(tmp_path / "inv.dcm").array
    assert float(inv[0, 0]) == raw.max() and float(inv[-1, -1]) == 0  # MONOCHROME1 inverted


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "x.bmp").write_bytes(b"BM")
    for name, words in (("empty.png", "empty"), ("junk.png", "corrupt"), ("junk.dcm", "DICOM"),
                        ("x.bmp", "unsupported"), ("missing.png", "not found")):
        with pytest.raises(ImageReadError, match=words):
            read_image2d(tmp_path / name)
    with pytest.raises(InputError, match="non-empty"):
        image2d_from_array(np.zeros((0, 4)))
    with pytest.raises(InputError, match="NaN"):
        image2d_from_array(np.array([[np.nan]]))


def test_write_mask2d_png_tiff_and_errors(tmp_path):
    _, mask = phantom()
    out = write_mask2d(mask, tmp_path / "m.png")
    back = np.asarray(PILImage.open(out))
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 1} and np.array_equal(back > 0, mask)
    back255 = np.asarray(PILImage.open(write_mask2d(mask, tmp_path / "m255.png", foreground=255)))
    assert set(np.unique(back255)) == {0, 255} and np.array_equal(back255 > 0, mask)
    labels = mask.astype(np.uint16) * 300
    assert np.array_equal(tifffile.imread(write_mask2d(labels, tmp_path / "l.tif")), labels)
    stack = np.stack([mask, ~mask, mask])
    assert tifffile.imread(write_mask2d(stack, tmp_path / "s.tiff")).shape == (3, 60, 80)
    with pytest.raises(UsageError, match="extension"):
        write_mask2d(mask, tmp_path / "m.jpg")
    with pytest.raises(UsageError, match="multi-page"):
        write_mask2d(stack, tmp_path / "s.png")
    with pytest.raises(UsageError, match="does not exist"):
        write_mask2d(mask, tmp_path / "nope" / "m.png")
    with pytest.raises(InputError, match="label type"):
        write_mask2d(mask.astype(float), tmp_path / "f.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "m.png", "m255.png", "s.tiff"]  # no temporary files
