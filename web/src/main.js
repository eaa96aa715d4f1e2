// voxprompt browser viewer: NiiVue + the server's /api/viewer endpoints (see voxprompt/server/web.py).
//
// Open a volume (upload or --data-dir file), click to add positive/negative points, see the label
// overlay update, undo, switch and lock objects, download the labels as NIfTI. Clicks are converted from
// NiiVue's world mm to the file's voxel (i, j, k) through the file's affine (geometry.js).
import { Niivue, NVImage, SLICE_TYPE } from "@niivue/niivue";
import { mmToFileVoxel, roundVoxel } from "./geometry.js";

const API = "api/viewer";
const COLORS = [[255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [220, 64, 255], [0, 220, 220],
  [255, 128, 0], [160, 255, 160]];

const $ = (id) => document.getElementById(id);
const state = {
  token: null, name: "", key: sessionStorage.getItem("voxprompt-key") || "", positive: true,
  volume: null, overlay: null, objects: [1], objectId: 1, version: 0, lastClick: null, busy: false, clickSeq: 0, refining: false,
  heartbeat: null, config: null, error: null,
};
const nv = new Niivue({
  backColor: [0.1, 0.1, 0.12, 1], crosshairColor: [0.3, 0.8, 1, 1], show3Dcrosshair: false,
  dragAndDropEnabled: false,
});

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function call(path, { method = "POST", json, form } = {}) {
  const init = { method, headers: headers(json !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  if (form !== undefined) init.body = form;
  const r = await fetch(path, init);
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${msg}`);
  }
  return r;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  if (isError) state.error = text;
}

async function guarded(what, fn) {
  if (state.busy) return;
  state.busy = true;
  document.body.classList.add("busy");
  try {
    await fn();
  } catch (e) {
    status(`${what}: ${e.message}`, true);
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

function labelLut(maxId) {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0] };
  for (let i = 1; i <= Math.max(1, maxId); i++) {
    const c = COLORS[(i - 1) % COLORS.length];
    cm.R.push(c[0]); cm.G.push(c[1]); cm.B.push(c[2]); cm.A.push(255); cm.I.push(i);
  }
  return cm;
}

async function reloadOverlay() {
  const r = await call(`${API}/${state.token}/labels.nii.gz`, { method: "GET" });
  const buffer = await r.arrayBuffer();
  const img = await NVImage.loadFromUrl({ url: "labels.nii.gz", name: "labels.nii.gz", buffer, opacity: 0.5 });
  img.setColormapLabel(labelLut(Math.max(...state.objects)));
  if (state.overlay) nv.removeVolume(state.overlay);
  nv.addVolume(img);
  state.overlay = img;
}

function applySummary(s) {
  state.objects = s.objects;
  state.objectId = s.object_id;
  const sel = $("objects");
  const locked = s.locked || [];
  sel.replaceChildren(...s.objects.map((id) => new Option(`object ${id}${locked.includes(id) ? " (locked)" : ""}`,
    String(id), false, id === s.object_id)));
  $("lock").checked = locked.includes(s.object_id);
  $("others-negative").checked = Boolean(s.others_negative);
  $("undo").disabled = !s.can_undo;
  const score = s.score === null || s.score === undefined ? "" : `, predicted IoU ${s.score.toFixed(3)}`;
  const warning = s.warning ? ` \u2014 check the result: ${s.warning}` : "";
  const refining = s.refining ? " \u2014 refining the boundary\u2026" : "";
  status(`${state.name}: object ${s.object_id}, ${s.voxels} voxels${score}${warning}${refining}`);
  if (s.low_confidence) $("status").className = "warn";
}

async function afterChange(summary) {
  if (summary.version < state.version) return; // an older answer arriving late
  applySummary(summary);
  await reloadOverlay();
  state.version = summary.version;
  state.refining = Boolean(summary.refining); // set last: the overlay shown is this answer's
}

// The server answers a click with the model's mask and refines its boundary in the background:
// show the refined mask when it lands, unless a newer click (which cancels it) came first.
async function followRefinement(seq) {
  try {
    for (;;) {
      const s = await (await call(`${API}/${state.token}/refined`)).json();
      if (seq !== state.clickSeq) return;
      if (s.refined || !s.refining) {
        await afterChange(s);
        return;
      }
    }
  } catch (e) {
    if (seq === state.clickSeq) status(`refinement: ${e.message}`, true);
  }
}

async function open(form) {
  const r = await call(`${API}/open`, { form });
  const info = await r.json();
  if (state.token) call(`${API}/${state.token}`, { method: "DELETE" }).catch(() => {});
  state.token = info.token;
  state.clickSeq++; // a refinement still followed belongs to the previous volume
  state.name = info.name;
  const vr = await call(`${API}/${state.token}/volume.nii.gz`, { method: "GET" });
  const buffer = await vr.arrayBuffer();
  const vol = await NVImage.loadFromUrl({ url: "volume.nii.gz", name: "volume.nii.gz", buffer, colormap: "gray" });
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  state.overlay = null;
  nv.addVolume(vol);
  state.volume = vol;
  clearInterval(state.heartbeat);
  const beat = (state.config && state.config.heartbeat_s) || 30;
  state.heartbeat = setInterval(() => call(`${API}/${state.token}/heartbeat`).catch(() => {}), beat * 1000);
  for (const id of ["undo", "new-object", "objects", "lock", "others-negative", "reset", "download"]) {
    $(id).disabled = false;
  }
  await afterChange(info);
}

async function clickAt(mm) {
  const ijk = roundVoxel(mmToFileVoxel(state.volume.hdr.affine, mm));
  const dims = state.volume.hdr.dims;
  state.lastClick = { mm: [mm[0], mm[1], mm[2]], ijk };
  if (ijk.some((v, a) => v < 0 || v >= dims[a + 1])) {
    status(`click at voxel ${ijk} is outside the volume`, true);
    return;
  }
  const seq = ++state.clickSeq;
  const r = await call(`${API}/${state.token}/point`, { json: { ijk, positive: state.positive } });
  const summary = await r.json();
  await afterChange(summary);
  if (summary.refining) followRefinement(seq); // not awaited: the next click may come at once
}

function setPolarity(positive) {
  state.positive = positive;
  $("positive").checked = positive;
  $("negative").checked = !positive;
}

async function listFiles() {
  if (!state.config.data_dir) return;
  const files = (await (await call(`${API}/files`, { method: "GET" })).json()).files;
  $("files").replaceChildren(...files.map((f) => new Option(f, f)));
  $("open-path").disabled = files.length === 0;
}

async function downloadLabels() {
  const r = await call(`${API}/${state.token}/labels.nii.gz?download=true`, { method: "GET" });
  const blob = await r.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${state.name.split(".")[0] || "volume"}_labels.nii.gz`;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function wireCanvasClicks(canvas) {
  // A left click (not a drag) adds a point where NiiVue put the crosshair; drags and the wheel only navigate.
  let down = null;
  canvas.addEventListener("pointerdown", (e) => { down = e.button === 0 ? [e.clientX, e.clientY] : null; });
  canvas.addEventListener("pointerup", (e) => {
    if (!down || !state.token || e.button !== 0) return;
    const moved = Math.hypot(e.clientX - down[0], e.clientY - down[1]);
    down = null;
    if (moved > 4) return;
    setTimeout(() => {
      const mm = nv.frac2mm(nv.scene.crosshairPos);
      guarded("point", () => clickAt(mm));
    }, 0);
  });
}

async function main() {
  await nv.attachTo("gl");
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  wireCanvasClicks($("gl"));
  state.config = await (await fetch(`${API}/config`)).json();
  $("key-row").hidden = !state.config.auth;
  $("path-row").hidden = !state.config.data_dir;
  $("model").textContent = state.config.model;
  $("key").value = state.key;
  $("key").addEventListener("change", () => {
    state.key = $("key").value.trim();
    sessionStorage.setItem("voxprompt-key", state.key);
    guarded("files", listFiles);
  });
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    if (!f) return;
    const form = new FormData();
    form.append("file", f, f.name);
    guarded("open", () => open(form));
  });
  $("open-path").addEventListener("click", () => {
    const form = new FormData();
    form.append("path", $("files").value);
    guarded("open", () => open(form));
  });
  $("positive").addEventListener("change", () => setPolarity(true));
  $("negative").addEventListener("change", () => setPolarity(false));
  $("undo").addEventListener("click", () => guarded("undo", async () => {
    await afterChange(await (await call(`${API}/${state.token}/undo`)).json());
  }));
  $("reset").addEventListener("click", () => guarded("reset", async () => {
    await afterChange(await (await call(`${API}/${state.token}/reset`)).json());
  }));
  $("new-object").addEventListener("click", () => guarded("new object", async () => {
    await afterChange(await (await call(`${API}/${state.token}/objects`)).json());
  }));
  $("objects").addEventListener("change", () => guarded("select object", async () => {
    await afterChange(await (await call(`${API}/${state.token}/objects/${$("objects").value}`)).json());
  }));
  // label policy: a locked object is never overwritten by another object's clicks
  $("lock").addEventListener("change", () => guarded("lock object", async () => {
    const json = { locked: $("lock").checked };
    await afterChange(await (await call(`${API}/${state.token}/objects/${state.objectId}/lock`, { json })).json());
  }));
  $("others-negative").addEventListener("change", () => guarded("others negative", async () => {
    const json = { others_negative: $("others-negative").checked };
    await afterChange(await (await call(`${API}/${state.token}/policy`, { json })).json());
  }));
  $("download").addEventListener("click", () => guarded("download", downloadLabels));
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    if (e.key === "t") setPolarity(!state.positive);
  });
  if (state.config.data_dir && (!state.config.auth || state.key)) await guarded("files", listFiles);
  status("open a volume, then click on it (t toggles positive/negative)");
}

window.voxprompt = { nv, state, mmToFileVoxel, ready: main().catch((e) => status(`startup: ${e.message}`, true)) };
