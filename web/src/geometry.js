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
