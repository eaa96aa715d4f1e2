// World <-> file-voxel geometry for the viewer (mirrors voxprompt.server.volumes.ras_to_file_ijk).
//
// NiiVue's `vox` indices live in its RAS-reoriented grid, not in the file's voxel order, so clicks
// are converted from world mm through the inverse of the file's own affine (hdr.affine: 4x4 rows,
// file voxel (i, j, k) -> RAS mm).

/** Inverse of a 4x4 matrix given as 4 rows (Gauss-Jordan with partial pivoting). */
export function invert4(m) {
  const a = m.map((row, r) => [...row.map(Number), ...[0, 1, 2, 3].map((c) => (c === r ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    if (Math.abs(a[p][c]) < 1e-12) throw new Error("affine is singular");
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let k = 0; k < 8; k++) a[c][k] /= d;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let k = 0; k < 8; k++) a[r][k] -= f * a[c][k];
    }
  }
  return a.map((row) => row.slice(4));
}

/** World mm [x, y, z] -> continuous file voxel [i, j, k] through inv(affine). */
export function mmToFileVoxel(affine, mm) {
  const inv = invert4(affine);
  const p = [Number(mm[0]), Number(mm[1]), Number(mm[2]), 1];
  return [0, 1, 2].map((r) => inv[r][0] * p[0] + inv[r][1] * p[1] + inv[r][2] * p[2] + inv[r][3]);
}

/** Nearest voxel of a continuous index. */
export function roundVoxel(v) {
  return v.map((x) => Math.floor(x + 0.5));
}

/** File voxel [i, j, k] (continuous) -> world mm [x, y, z] through the file's affine. */
export function fileVoxelToMm(affine, ijk) {
  const p = [Number(ijk[0]), Number(ijk[1]), Number(ijk[2]), 1];
  return [0, 1, 2].map((r) => affine[r][0] * p[0] + affine[r][1] * p[1] + affine[r][2] * p[2] + affine[r][3]);
}

// NiiVue's 2D tiles (nv.screenSlices) show a plane in "screen mm": RAS reordered per orientation
// (axial x, y, z; coronal x, z, y; sagittal y, z, x), the third being the depth through the plane.
// These mirror NiiVue's own screenXY2TextureFrac / frac2canvasPos (CoordinateTransform.ts).
const TO_SCREEN = [[0, 1, 2], [0, 2, 1], [1, 2, 0]];
const FROM_SCREEN = [[0, 1, 2], [0, 2, 1], [2, 0, 1]];

/** The RAS axis a tile looks along (axial: z, coronal: y, sagittal: x). */
export function tileNormalAxis(slice) {
  return TO_SCREEN[slice.axCorSag][2];
}

function ltwhOf(slice) {
  let [l, t, w, h] = slice.leftTopWidthHeight;
  const mirror = w < 0; // radiological convention: the tile is drawn mirrored
  if (mirror) { l += w; w = -w; }
  return { l, t, w, h, mirror };
}

/** World mm -> canvas pixel {x, y} on a 2D tile, with ``depth`` (mm from the tile's plane) and
 *  ``inside`` (within the tile's field of view). */
export function worldToTile(slice, mm) {
  const v = TO_SCREEN[slice.axCorSag].map((a) => Number(mm[a]));
  const a = slice.AxyzMxy;
  const depth = v[2] - (a[2] + a[4] * (v[1] - a[1]) - a[3] * (v[0] - a[0]));
  const fx = (v[0] - slice.leftTopMM[0]) / slice.fovMM[0];
  const fy = (v[1] - slice.leftTopMM[1]) / slice.fovMM[1];
  const { l, t, w, h, mirror } = ltwhOf(slice);
  return { x: l + (mirror ? 1 - fx : fx) * w, y: t + (1 - fy) * h, depth,
    inside: fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1 };
}

/** Canvas pixel (x, y) on a 2D tile -> world mm on the tile's plane (inverse of worldToTile). */
export function tileToWorld(slice, x, y) {
  const { l, t, w, h, mirror } = ltwhOf(slice);
  let fx = (x - l) / w;
  if (mirror) fx = 1 - fx;
  const fy = 1 - (y - t) / h;
  const v0 = slice.leftTopMM[0] + fx * slice.fovMM[0];
  const v1 = slice.leftTopMM[1] + fy * slice.fovMM[1];
  const a = slice.AxyzMxy;
  const v = [v0, v1, a[2] + a[4] * (v1 - a[1]) - a[3] * (v0 - a[0])];
  return FROM_SCREEN[slice.axCorSag].map((i) => v[i]);
}

/** Index of the 2D tile (axial, coronal or sagittal) under canvas pixel (x, y), or -1. */
export function tileAt(slices, x, y) {
  for (let i = 0; i < slices.length; i++) {
    if (slices[i].axCorSag > 2 || slices[i].AxyzMxy.length < 4) continue;
    const { l, t, w, h } = ltwhOf(slices[i]);
    if (x >= l && x <= l + w && y >= t && y <= t + h) return i;
  }
  return -1;
}

/** Half the extent (mm) of one file voxel along RAS axis ``axis``: how far a voxel centre may lie from
 *  a plane through that voxel. */
export function halfVoxelAlong(affine, axis) {
  return 0.5 * Math.max(...[0, 1, 2].map((c) => Math.abs(affine[axis][c])));
}
