// voxprompt browser viewer: NiiVue + the server's /api/viewer endpoints (see voxprompt/server/viewer.py).
//
// Open a volume (upload with progress, a zip of a DICOM series, or a --data-dir file), prompt with points,
// boxes (and scribbles / lassos where the server has them) drawn on a slice, see the label overlay and the
// current object's prompts as markers, undo, name, colour and lock objects, save as NIfTI or DICOM SEG.
// Prompts are converted from NiiVue's world mm to the file's voxel (i, j, k) through the file's affine
// (geometry.js). Every server action runs in one queue: prompts made while a prediction runs wait their
// turn (up to MAX_QUEUE; more are refused with a message). After a change the page fetches only the block of
// the label map that changed (labels/block, the answer's changed_bbox_kji) into its overlay, and the whole map
// when the block is unknown (undo, reset, a lock, a new image, a restored session) or fetching it failed. If the
// server lost the session, it restores it (POST /restore) or opens the image again and re-sends the masks its
// overlay shows.
import { Niivue, NVImage, SLICE_TYPE } from "@niivue/niivue";
import {
  fileVoxelToMm, halfVoxelAlong, mmToFileVoxel, roundVoxel, tileAt, tileNormalAxis, tileToWorld,
  worldToTile,
} from "./geometry.js";

const API = "api/viewer";
const COLORS = [[255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [220, 64, 255], [0, 220, 220],
  [255, 128, 0], [160, 255, 160]];
// CT windows as [width, level] in HU
const WINDOWS = { soft: [400, 40], lung: [1500, -600], bone: [1800, 400], brain: [80, 40] };
const MAX_QUEUE = 8; // server actions waiting behind the running one; more are refused
// marker colours: fully saturated, which the half-transparent label overlay never shows
const MARK = { positive: "rgb(0, 230, 90)", negative: "rgb(255, 30, 30)", box: "rgb(255, 210, 0)", draft: "#fff" };
const TOOLS = ["point", "box", "scribble", "lasso"];

const $ = (id) => document.getElementById(id);
const state = {
  token: null, name: "", key: sessionStorage.getItem("voxprompt-key") || "", positive: true, tool: "point",
  volume: null, overlay: null, objects: [1], objectId: 1, names: {}, locked: [], othersNegative: false, dicom: false,
  clicks: [], boxes: [], strokes: [], pending: [], drawing: null, version: 0, lastClick: null, lastPrompt: null,
  busy: false, queued: 0, maxQueued: 0, chain: Promise.resolve(), clickSeq: 0, refining: false,
  heartbeat: null, config: null, error: null, source: null, autoWindow: null, upload: null,
  recoveries: 0, summaryRev: 0, maxQueue: MAX_QUEUE, tools: ["point", "box"],
  labelSync: Promise.resolve(), stale: false, fullLoads: 0, blockLoads: 0,
};
const nv = new Niivue({
  backColor: [0.1, 0.1, 0.12, 1], crosshairColor: [0.3, 0.8, 1, 0.8], show3Dcrosshair: false,
  crosshairWidth: 0.3, crosshairWidthUnit: "percent", // a thin line whatever the voxel size
  dragAndDropEnabled: false,
});

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function call(path, { method = "POST", json, form, extraHeaders = {} } = {}) {
  const init = { method, headers: headers({ ...extraHeaders, ...(json !== undefined ? { "Content-Type": "application/json" } : {}) }) };
  if (json !== undefined) init.body = JSON.stringify(json);
  if (form !== undefined) init.body = form;
  const r = await fetch(path, init);
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  return r;
}

// An upload with progress (fetch has no upload progress events).
function upload(path, form) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("POST", path);
    if (state.key) x.setRequestHeader("Authorization", `Bearer ${state.key}`);
    x.responseType = "json";
    state.upload = { loaded: 0, total: 0 };
    x.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      state.upload = { loaded: e.loaded, total: e.total };
      showProgress(e.loaded / e.total, `uploading ${(e.loaded / 2 ** 20).toFixed(1)} of ${(e.total / 2 ** 20).toFixed(1)} MB`);
    };
    x.upload.onload = () => showProgress(null, "reading the volume on the server\u2026");
    x.onload = () => {
      showProgress(null, "working\u2026");
      if (x.status >= 200 && x.status < 300) resolve(x.response);
      else reject(new ApiError(x.status, (x.response && x.response.detail) || x.statusText));
    };
    x.onerror = () => { showProgress(null, "working\u2026"); reject(new Error("network error during the upload")); };
    x.send(form);
  });
}

function showProgress(fraction, text) {
  const bar = $("progress");
  bar.hidden = fraction === null;
  if (fraction !== null) bar.value = fraction;
  $("busy-text").textContent = text;
}

// The footer keeps one line (a wrapped message would resize the canvas): a long message is cut with an
// ellipsis and shown whole on hover.
function status(text, kind = "") {
  $("status").textContent = text;
  $("status").title = text;
  $("status").className = kind;
  if (kind === "error") state.error = text;
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").title = text;
}

function showBusy() {
  document.body.classList.toggle("busy", state.busy);
  if (state.busy && $("progress").hidden) {
    $("busy-text").textContent = state.queued > 1 ? `working\u2026 (${state.queued - 1} waiting)` : "working\u2026";
  }
}

// ------------------------------------------------------------------ the action queue
function enqueue(what, fn) {
  if (state.queued > state.maxQueue) {
    status(`${what} refused: still working on ${state.queued} earlier actions \u2014 wait for them`, "error");
    return false;
  }
  state.queued++;
  state.maxQueued = Math.max(state.maxQueued, state.queued);
  state.busy = true;
  showBusy();
  state.chain = state.chain.then(async () => {
    try {
      await withRecovery(fn);
    } catch (e) {
      status(`${what}: ${e.message}`, "error");
    } finally {
      state.queued--;
      state.busy = state.queued > 0;
      showBusy();
    }
  });
  return true;
}

async function withRecovery(fn) {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 410 || !state.token) throw e;
    await recover(e);
    return fn();
  }
}

// The session is gone (410): restore it if the server still keeps it, else open the image again and put
// back the masks the page showed last (with the objects' names and locks). Clicks and undo history are lost.
async function recover(why) {
  try {
    await call("restore", { extraHeaders: { "X-Lease-Token": state.token } });
    notice("the session had expired on the server and was restored");
    state.stale = true; // its labels may differ from the overlay's: the next answer loads them all
    restartHeartbeat();
    return;
  } catch (e) {
    if (!(e instanceof ApiError) || !state.source) throw e;
  }
  // the label map the page shows, written from its overlay (the server's file order and dtype, its header)
  const labels = state.overlay ? await state.overlay.saveToUint8Array("labels.nii") : null;
  const keep = { labels, names: { ...state.names }, locked: [...state.locked],
    othersNegative: state.othersNegative, objectId: state.objectId };
  const info = await upload(`${API}/open`, state.source());
  setToken(info.token);
  let s = info;
  if (keep.labels) {
    const form = new FormData();
    form.append("file", new Blob([keep.labels]), "labels.nii");
    s = await (await call(`${API}/${state.token}/masks`, { form })).json();
  }
  for (const [id, name] of Object.entries(keep.names)) {
    if (s.objects.includes(Number(id))) s = await (await call(`${API}/${state.token}/objects/${id}/name`, { json: { name } })).json();
  }
  for (const id of keep.locked) {
    if (s.objects.includes(id)) s = await (await call(`${API}/${state.token}/objects/${id}/lock`, { json: { locked: true } })).json();
  }
  if (keep.othersNegative) s = await (await call(`${API}/${state.token}/policy`, { json: { others_negative: true } })).json();
  if (s.objects.includes(keep.objectId)) s = await (await call(`${API}/${state.token}/objects/${keep.objectId}`)).json();
  state.recoveries++;
  await afterChange(s, { labels: "full" });
  notice(`the server had lost this session (${why.message.replace(/^410: /, "")}); the image was `
    + "opened again and your masks were put back (the undo history starts afresh)");
}

// ------------------------------------------------------------------ server answers
function labelLut(maxId) {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0] };
  for (let i = 1; i <= Math.max(1, maxId); i++) {
    const c = colorOf(i);
    cm.R.push(c[0]); cm.G.push(c[1]); cm.B.push(c[2]); cm.A.push(255); cm.I.push(i);
  }
  return cm;
}

function colorOf(id) {
  return COLORS[(id - 1) % COLORS.length];
}

async function reloadOverlay() {
  state.stale = false;
  const r = await call(`${API}/${state.token}/labels.nii.gz`, { method: "GET" });
  const buffer = await r.arrayBuffer();
  const img = await NVImage.loadFromUrl({ url: "labels.nii.gz", name: "labels.nii.gz", buffer, opacity: 0.5 });
  const overlay = state.overlay;
  if (overlay && sameGrid(overlay, img)) { // the same session's map: its voxels into the overlay shown
    overlay.img.set(img.img);
    overlay.setColormapLabel(labelLut(Math.max(...state.objects)));
    redrawOverlay();
  } else { // a first overlay or another grid or dtype (e.g. past 255 objects): NiiVue renders every layer again
    img.setColormapLabel(labelLut(Math.max(...state.objects)));
    if (overlay) nv.removeVolume(overlay);
    nv.addVolume(img);
    state.overlay = img;
  }
  state.fullLoads++;
}

// Whether label image `b` has the voxel grid and array type of overlay `a` (its voxels can replace a's).
function sameGrid(a, b) {
  return a.img.constructor === b.img.constructor && a.img.length === b.img.length
    && [1, 2, 3].every((d) => a.hdr.dims[d] === b.hdr.dims[d])
    && JSON.stringify(a.hdr.affine) === JSON.stringify(b.hdr.affine);
}

// Show the overlay's voxels after they changed in place. NiiVue's updateGLVolume() renders every volume's
// texture again, the image's included: on a 512x512x133 CT in software GL that is ~14 s (its 3D textures and
// the blur and Sobel passes of its gradient texture), against 2-3 s for the overlay alone (mostly uploading
// its voxels; benchmarks/viewer_step.py). The overlay is layer 1 of two, which refreshLayers(overlay, 1)
// renders as updateGLVolume() does (layer 1 reads only its own voxels and colour table; the image's texture
// is untouched); then one redraw, as updateGLVolume() ends.
function redrawOverlay() {
  if (nv.volumes.length !== 2 || nv.volumes[1] !== state.overlay) {
    nv.updateGLVolume();
    return;
  }
  nv.refreshLayers(state.overlay, 1);
  nv.drawScene();
}

// Copy the label map inside box [[k0, k1], [j0, j1], [i0, i1]] (array indices, half-open) from the server into
// the overlay's voxels: NiiVue keeps them in the file's order (i fastest, then j, then k) and type, which the
// block comes in, so each (k, j) row of the block is one contiguous run of the overlay.
async function updateBlock(box) {
  const [[k0, k1], [j0, j1], [i0, i1]] = box;
  const query = new URLSearchParams({ k0, k1, j0, j1, i0, i1 });
  const r = await call(`${API}/${state.token}/labels/block?${query}`, { method: "GET" });
  const Typed = r.headers.get("X-Label-Dtype") === "uint16" ? Uint16Array : Uint8Array;
  const block = new Typed(await r.arrayBuffer());
  const overlay = state.overlay;
  const img = overlay.img;
  const [nx, ny] = [overlay.hdr.dims[1], overlay.hdr.dims[2]];
  const ni = i1 - i0;
  if (!(img instanceof Typed) || block.length !== (k1 - k0) * (j1 - j0) * ni) {
    throw new Error("the label block does not fit the overlay"); // e.g. past 255 objects: a full reload
  }
  let n = 0;
  for (let k = k0; k < k1; k++) {
    for (let j = j0; j < j1; j++, n += ni) img.set(block.subarray(n, n + ni), i0 + nx * (j + ny * k));
  }
  overlay.setColormapLabel(labelLut(Math.max(...state.objects))); // new objects need their colours
  redrawOverlay();
  state.blockLoads++;
}

// Bring the overlay up to date: the block `box` (null: nothing changed) or, with `full`, the whole label map.
// Runs in one chain, so that blocks land in the order they were asked for (each holds the server's labels
// when it was fetched); a block that fails falls back to the whole map.
function syncLabels(box, full = false) {
  const token = state.token;
  const run = state.labelSync.then(async () => {
    if (token !== state.token) return; // another session's: opening it loads its labels
    if (full || state.stale || !state.overlay) return reloadOverlay();
    if (!box) return;
    try {
      await updateBlock(box);
    } catch (e) {
      if (e instanceof ApiError && e.status === 410) throw e; // the session is gone: recovery
      console.warn(`label block: ${e.message}; loading the whole label map`);
      await reloadOverlay();
    }
  });
  state.labelSync = run.catch(() => {});
  return run;
}

function objectName(id) {
  return state.names[id] || `object ${id}`;
}

function renderObjects() {
  const list = $("object-list");
  const ids = state.objects.map(String);
  const same = list.children.length === ids.length && [...list.children].every((li, n) => li.dataset.id === ids[n]);
  if (!same) {
    list.replaceChildren(...state.objects.map((id) => {
      const li = document.createElement("li");
      li.dataset.id = String(id);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = `rgb(${colorOf(id).join(",")})`;
      const name = document.createElement("input");
      name.className = "name";
      name.placeholder = `object ${id}`;
      name.title = "the object's name (a DICOM SEG's segment label)";
      name.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === "Escape") name.blur(); }); // keys work again
      name.addEventListener("change", () => enqueue("name", async () => {
        await afterChange(await (await call(`${API}/${state.token}/objects/${id}/name`, { json: { name: name.value } })).json());
      }));
      const lock = document.createElement("label");
      lock.className = "lock";
      lock.title = "locked: other objects' prompts never take its voxels";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "lock";
      box.addEventListener("change", () => enqueue("lock", async () => {
        const json = { locked: box.checked };
        await afterChange(await (await call(`${API}/${state.token}/objects/${id}/lock`, { json })).json(),
          { labels: "full" }); // a locked object is painted over the others
      }));
      lock.append(box, " lock");
      li.append(sw, name, lock);
      li.addEventListener("click", (e) => {
        if (e.target instanceof HTMLInputElement || e.target instanceof HTMLLabelElement) return;
        selectObject(id);
      });
      return li;
    }));
  }
  for (const li of list.children) {
    const id = Number(li.dataset.id);
    li.classList.toggle("current", id === state.objectId);
    li.querySelector("input.lock").checked = state.locked.includes(id);
    const name = li.querySelector("input.name");
    if (document.activeElement !== name) name.value = state.names[id] || "";
  }
}

function applySummary(s) {
  state.objects = s.objects;
  state.objectId = s.object_id;
  state.names = s.names || {};
  state.locked = s.locked || [];
  state.othersNegative = Boolean(s.others_negative);
  state.clicks = s.clicks || [];
  state.boxes = s.boxes || [];
  state.strokes = s.strokes || [];
  state.summaryRev++; // the markers are drawn again
  state.dicom = Boolean(s.dicom);
  renderObjects();
  $("others-negative").checked = state.othersNegative;
  $("undo").disabled = !s.can_undo;
  $("download-seg").disabled = !state.dicom;
  const score = s.score === null || s.score === undefined ? "" : `, predicted IoU ${s.score.toFixed(3)}`;
  const warning = s.warning ? ` \u2014 check the result: ${s.warning}` : "";
  const refining = s.refining ? " \u2014 refining the boundary\u2026" : "";
  const locked = state.locked.includes(s.object_id) ? " (locked)" : "";
  status(`${state.name}: ${objectName(s.object_id)}${locked}, ${s.voxels} voxels${score}${warning}${refining}`,
    s.low_confidence ? "warn" : "");
}

// `labels`: "box" (the answer's changed_bbox_kji bounds every label change since the previous answer; null:
// none) or "full" (the change is not boxed: undo, reset, a lock, a new session).
async function afterChange(summary, { labels = "box" } = {}) {
  const box = summary.changed_bbox_kji || null;
  if (summary.version < state.version) { // an older answer arriving late: its labels still count
    if (box) await syncLabels(box);
    return;
  }
  applySummary(summary);
  await syncLabels(box, labels === "full");
  state.version = summary.version;
  state.refining = Boolean(summary.refining); // set last: the overlay shown is this answer's
}

// The server answers a prompt with the model's mask and refines its boundary in the background:
// show the refined mask when it lands, unless a newer prompt (which cancels it) came first.
async function followRefinement(seq, first) {
  try {
    for (;;) {
      const s = await (await call(`${API}/${state.token}/refined`)).json();
      const done = s.refined || !s.refining;
      if (seq !== state.clickSeq || !done) { // not shown as an answer, but what it reports changed still is
        if (s.changed_bbox_kji) syncLabels(s.changed_bbox_kji).catch(() => {});
        if (seq !== state.clickSeq) return; // a newer prompt took over
        continue;
      }
      if (!s.refined && (s.score === null || s.score === undefined)) {
        // the refinement landed before this request (a label download applies it): keep the prompt's
        // score and warning, which the refinement does not change
        Object.assign(s, { score: first.score, warning: first.warning, low_confidence: first.low_confidence });
      }
      await afterChange(s);
      return;
    }
  } catch (e) {
    if (seq === state.clickSeq) status(`refinement: ${e.message}`, "error");
  }
}

function setToken(token) {
  if (state.token && state.token !== token) call(`${API}/${state.token}`, { method: "DELETE" }).catch(() => {});
  state.token = token;
  state.version = 0; // versions count per session
  state.clickSeq++; // a refinement still followed belongs to the previous session
  restartHeartbeat();
}

function restartHeartbeat() {
  clearInterval(state.heartbeat);
  const beat = (state.config && state.config.heartbeat_s) || 30;
  state.heartbeat = setInterval(async () => {
    if (!state.token || state.busy) return;
    try {
      await call(`${API}/${state.token}/heartbeat`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 410 && !state.busy) enqueue("reconnect", () => recover(e));
    }
  }, beat * 1000);
}

// ------------------------------------------------------------------ actions
async function open(source) {
  const info = await upload(`${API}/open`, source());
  setToken(info.token);
  state.name = info.name;
  state.source = source;
  state.pending = [];
  notice("");
  const vr = await call(`${API}/${state.token}/volume.nii.gz`, { method: "GET" });
  const buffer = await vr.arrayBuffer();
  const vol = await NVImage.loadFromUrl({ url: "volume.nii.gz", name: "volume.nii.gz", buffer, colormap: "gray" });
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  state.overlay = null;
  state.volume = vol;
  state.autoWindow = [vol.cal_min, vol.cal_max];
  applyWindow(false); // before addVolume(), which renders the image: once, not twice (~14 s each on a large CT)
  nv.addVolume(vol);
  for (const id of ["undo", "new-object", "others-negative", "reset", "download"]) $(id).disabled = false;
  await afterChange(info);
}

async function sendPrompt(path, body) {
  const seq = ++state.clickSeq;
  state.lastPrompt = { path, body };
  const summary = await (await call(`${API}/${state.token}/${path}`, { json: body })).json();
  await afterChange(summary);
  if (summary.refining) followRefinement(seq, summary); // not awaited: the next prompt may come at once
}

function clickAt(mm) {
  const ijk = roundVoxel(mmToFileVoxel(state.volume.hdr.affine, mm));
  const dims = state.volume.hdr.dims;
  state.lastClick = { mm: [mm[0], mm[1], mm[2]], ijk };
  if (ijk.some((v, a) => v < 0 || v >= dims[a + 1])) {
    status(`click at voxel ${ijk} is outside the volume`, "error");
    return;
  }
  const mark = { ijk, positive: state.positive, pending: true };
  const body = { ijk, positive: state.positive };
  if (!enqueue("point", async () => {
    try { await sendPrompt("point", body); } finally { state.pending = state.pending.filter((m) => m !== mark); }
  })) return;
  state.pending = [...state.pending, mark]; // shown (faded) until its answer is in
}

function selectObject(id) {
  enqueue("select object", async () => {
    await afterChange(await (await call(`${API}/${state.token}/objects/${id}`)).json());
  });
}

function undo() {
  if (!state.token) return;
  enqueue("undo", async () => {
    state.clickSeq++; // a refinement still followed is undone with its prompt
    await afterChange(await (await call(`${API}/${state.token}/undo`)).json(), { labels: "full" });
  });
}

function newObject() {
  if (!state.token) return;
  enqueue("new object", async () => {
    await afterChange(await (await call(`${API}/${state.token}/objects`)).json());
  });
}

function setPolarity(positive) {
  state.positive = positive;
  const sign = $("sign");
  sign.className = positive ? "positive" : "negative";
  sign.textContent = positive ? "+ positive" : "\u2212 negative";
}

function setTool(tool) {
  if (!state.tools.includes(tool)) return;
  state.tool = tool;
  state.drawing = null;
  for (const b of $("tools").querySelectorAll("button")) b.classList.toggle("active", b.dataset.tool === tool);
  document.body.classList.toggle("drawing", tool !== "point");
}

function cancelDrawing() {
  if (!state.drawing) return;
  state.drawing = null;
  status(`${state.tool} cancelled`);
}

// The chosen window as the image's display range; `render`: render the image again (a new window changes its
// texture), false when it is about to be added.
function applyWindow(render = true) {
  const vol = state.volume;
  if (!vol || !state.autoWindow) return;
  const preset = WINDOWS[$("window").value];
  [vol.cal_min, vol.cal_max] = preset ? [preset[1] - preset[0] / 2, preset[1] + preset[0] / 2] : state.autoWindow;
  if (render) nv.updateGLVolume();
}

function applyLayout() {
  const v = $("layout").value;
  nv.setSliceType(v === "multi" ? SLICE_TYPE.MULTIPLANAR : Number(v));
}

async function listFiles() {
  if (!state.config.data_dir) return;
  const files = (await (await call(`${API}/files`, { method: "GET" })).json()).files;
  $("files").replaceChildren(...files.map((f) => new Option(f, f)));
  $("open-path").disabled = files.length === 0;
}

async function download(path, fallback) {
  const r = await call(`${API}/${state.token}/${path}`, { method: "GET" });
  const blob = await r.blob();
  const m = (r.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = m ? m[1] : fallback;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ------------------------------------------------------------------ drawing on a slice
function canvasXY(e) {
  const gl = $("gl");
  const r = gl.getBoundingClientRect();
  return [((e.clientX - r.left) * gl.width) / r.width, ((e.clientY - r.top) * gl.height) / r.height];
}

function finishDrawing() {
  const d = state.drawing;
  state.drawing = null;
  const aff = state.volume.hdr.affine;
  const dims = state.volume.hdr.dims;
  const mm = d.pts.map(([x, y]) => tileToWorld(d.slice, x, y));
  if (d.tool === "box") {
    const [p, q] = d.pts;
    if (Math.abs(p[0] - q[0]) < 4 || Math.abs(p[1] - q[1]) < 4) {
      status("box too small: drag a rectangle on a slice");
      return;
    }
    const ijk = mm.map((m) => roundVoxel(mmToFileVoxel(aff, m)).map((v, a) => Math.min(Math.max(v, 0), dims[a + 1] - 1)));
    enqueue("box", () => sendPrompt("box", { ijk }));
  } else {
    // real file-voxel vertices, kept inside the volume; the server rasterises the path or fills the outline
    const ijk = mm.map((m) => mmToFileVoxel(aff, m).map((v, a) => Math.min(Math.max(v, 0), dims[a + 1] - 1)));
    if (d.tool === "lasso" && d.pts.length < 3) {
      status("lasso too small: draw a closed outline around the structure");
      return;
    }
    const body = { ijk, positive: state.positive };
    enqueue(d.tool, () => sendPrompt(d.tool, body));
  }
}

function wireDrawing(wrap) {
  // Box, scribble and lasso take the left button on a 2D tile; NiiVue never sees those mouse events
  // (stopped in the capture phase). The wheel and the other buttons still navigate.
  wrap.addEventListener("mousedown", (e) => {
    if (state.tool === "point" || e.button !== 0 || !state.token || !state.volume) return;
    e.stopPropagation();
    e.preventDefault();
    const [x, y] = canvasXY(e);
    const tile = tileAt(nv.screenSlices, x, y);
    if (tile < 0) {
      status(`draw the ${state.tool} on an axial, coronal or sagittal slice`);
      return;
    }
    const slice = JSON.parse(JSON.stringify(nv.screenSlices[tile]));
    state.drawing = { tool: state.tool, tile, slice, pts: [[x, y]] };
  }, true);
  window.addEventListener("mousemove", (e) => {
    const d = state.drawing;
    if (!d) return;
    e.stopPropagation();
    const p = canvasXY(e);
    if (d.tool === "box") d.pts = [d.pts[0], p];
    else {
      const last = d.pts[d.pts.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= 2) d.pts = [...d.pts, p];
    }
  }, true);
  window.addEventListener("mouseup", (e) => {
    if (!state.drawing || e.button !== 0) return;
    e.stopPropagation();
    finishDrawing();
  }, true);
}

function wireCanvasClicks(canvas) {
  // Point tool: a left click (not a drag) on a 2D tile adds a point there; drags and the wheel navigate.
  // The position is read at the click (not from NiiVue's crosshair later), so fast clicks each keep theirs.
  let down = null;
  canvas.addEventListener("pointerdown", (e) => { down = e.button === 0 && state.tool === "point" ? [e.clientX, e.clientY] : null; });
  canvas.addEventListener("pointerup", (e) => {
    if (!down || !state.token || e.button !== 0 || state.tool !== "point") return;
    const moved = Math.hypot(e.clientX - down[0], e.clientY - down[1]);
    down = null;
    if (moved > 4) return;
    const [x, y] = canvasXY(e);
    const tile = tileAt(nv.screenSlices, x, y);
    if (tile >= 0) clickAt(tileToWorld(nv.screenSlices[tile], x, y));
  });
}

// ------------------------------------------------------------------ markers (overlay canvas)
let paintedKey = "";

function glyph(ctx, x, y, positive, pending, dpr, radius = 8) {
  const r = radius * dpr;
  ctx.globalAlpha = pending ? 0.5 : 1;
  ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fill();
  ctx.strokeStyle = positive ? MARK.positive : MARK.negative;
  ctx.lineWidth = 2.5 * dpr;
  ctx.beginPath();
  ctx.moveTo(x - r * 0.65, y);
  ctx.lineTo(x + r * 0.65, y);
  if (positive) {
    ctx.moveTo(x, y - r * 0.65);
    ctx.lineTo(x, y + r * 0.65);
  }
  ctx.stroke();
  ctx.lineWidth = 1.5 * dpr;
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.globalAlpha = 1;
}

function paintMarks(ctx) {
  const vol = state.volume;
  if (!vol || !state.token) return;
  const aff = vol.hdr.affine;
  const dpr = window.devicePixelRatio || 1;
  const marks = [...state.clicks, ...state.pending];
  const ruled = state.strokes.flatMap((s) => s.clicks); // the clicks a scribble's or lasso's rule made
  nv.screenSlices.forEach((slice) => {
    if (slice.axCorSag > 2 || slice.AxyzMxy.length < 4) return;
    const tol = halfVoxelAlong(aff, tileNormalAxis(slice)) + 1e-3;
    for (const b of state.boxes) { // a box shows where the slice cuts it
      const pts = [];
      for (const i of [b.lo_ijk[0] - 0.5, b.hi_ijk[0] + 0.5]) {
        for (const j of [b.lo_ijk[1] - 0.5, b.hi_ijk[1] + 0.5]) {
          for (const k of [b.lo_ijk[2] - 0.5, b.hi_ijk[2] + 0.5]) pts.push(worldToTile(slice, fileVoxelToMm(aff, [i, j, k])));
        }
      }
      const depths = pts.map((p) => p.depth);
      if (Math.min(...depths) > 1e-3 || Math.max(...depths) < -1e-3) continue;
      const xs = pts.map((p) => p.x);
      const ys = pts.map((p) => p.y);
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.strokeStyle = MARK.box;
      ctx.lineWidth = 2 * dpr;
      ctx.strokeRect(Math.min(...xs), Math.min(...ys), Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
      ctx.setLineDash([]);
    }
    for (const s of state.strokes) { // a scribble's voxels on this slice, as dots
      ctx.fillStyle = s.positive ? MARK.positive : MARK.negative;
      for (const v of s.voxels) {
        const p = worldToTile(slice, fileVoxelToMm(aff, v));
        if (p.inside && Math.abs(p.depth) <= tol) ctx.fillRect(p.x - 1.5 * dpr, p.y - 1.5 * dpr, 3 * dpr, 3 * dpr);
      }
    }
    for (const m of ruled) {
      const p = worldToTile(slice, fileVoxelToMm(aff, m.ijk));
      if (p.inside && Math.abs(p.depth) <= tol) glyph(ctx, p.x, p.y, m.positive, false, dpr, 5);
    }
    for (const m of marks) {
      const p = worldToTile(slice, fileVoxelToMm(aff, m.ijk));
      if (p.inside && Math.abs(p.depth) <= tol) glyph(ctx, p.x, p.y, m.positive, m.pending, dpr);
    }
  });
  const d = state.drawing;
  if (d && d.pts.length) {
    ctx.lineWidth = 2 * dpr;
    ctx.strokeStyle = d.tool === "box" ? MARK.draft : state.positive ? MARK.positive : MARK.negative;
    ctx.setLineDash(d.tool === "box" ? [6 * dpr, 4 * dpr] : []);
    ctx.beginPath();
    if (d.tool === "box" && d.pts.length === 2) {
      const [p, q] = d.pts;
      ctx.rect(Math.min(p[0], q[0]), Math.min(p[1], q[1]), Math.abs(q[0] - p[0]), Math.abs(q[1] - p[1]));
    } else {
      d.pts.forEach(([x, y], n) => (n ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (d.tool === "lasso") ctx.closePath();
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

function drawMarks() {
  const gl = $("gl");
  const cv = $("marks");
  if (cv.width !== gl.width || cv.height !== gl.height) {
    cv.width = gl.width;
    cv.height = gl.height;
    paintedKey = "";
  }
  const key = JSON.stringify([state.token, state.summaryRev, state.pending, state.drawing && state.drawing.pts,
    nv.screenSlices.map((s) => [s.leftTopWidthHeight, s.leftTopMM, s.fovMM, s.AxyzMxy, s.axCorSag])]);
  if (key !== paintedKey) {
    paintedKey = key;
    const ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, cv.width, cv.height);
    paintMarks(ctx);
    state.marksPainted = (state.marksPainted || 0) + 1;
  }
  requestAnimationFrame(drawMarks);
}

// ------------------------------------------------------------------ start
function wireKeys() {
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const typing = t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement
      || (t instanceof HTMLInputElement && !["checkbox", "radio", "button", "file"].includes(t.type));
    if (typing) return;
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z" && !e.shiftKey) {
      e.preventDefault();
      undo();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (key === "escape") cancelDrawing();
    else if (key === "t") setPolarity(!state.positive);
    else if (key === "n") newObject();
    else if (key === "p") setTool("point");
    else if (key === "b") setTool("box");
    else if (key === "s") setTool("scribble");
    else if (key === "l") setTool("lasso");
  });
}

async function main() {
  await nv.attachTo("gl");
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  wireCanvasClicks($("gl"));
  wireDrawing($("gl-wrap"));
  wireKeys();
  requestAnimationFrame(drawMarks);
  state.config = await (await fetch(`${API}/config`)).json();
  state.tools = state.config.tools || ["point", "box"];
  for (const tool of TOOLS) $(`tool-${tool}`).hidden = !state.tools.includes(tool);
  $("keys-draw").hidden = !state.tools.includes("scribble");
  $("key-row").hidden = !state.config.auth;
  $("path-row").hidden = !state.config.data_dir;
  $("model").textContent = state.config.model;
  $("key").value = state.key;
  $("key").addEventListener("change", () => {
    state.key = $("key").value.trim();
    sessionStorage.setItem("voxprompt-key", state.key);
    enqueue("files", listFiles);
  });
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    if (!f) return;
    enqueue("open", () => open(() => {
      const form = new FormData();
      form.append("file", f, f.name);
      return form;
    }));
  });
  $("open-path").addEventListener("click", () => {
    const path = $("files").value;
    enqueue("open", () => open(() => {
      const form = new FormData();
      form.append("path", path);
      return form;
    }));
  });
  $("sign").addEventListener("click", () => setPolarity(!state.positive));
  for (const b of $("tools").querySelectorAll("button")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", () => enqueue("clear object", async () => {
    await afterChange(await (await call(`${API}/${state.token}/reset`)).json(), { labels: "full" });
  }));
  $("new-object").addEventListener("click", newObject);
  $("others-negative").addEventListener("change", () => enqueue("others negative", async () => {
    const json = { others_negative: $("others-negative").checked };
    await afterChange(await (await call(`${API}/${state.token}/policy`, { json })).json());
  }));
  $("window").addEventListener("change", () => applyWindow());
  $("radiological").addEventListener("change", () => nv.setRadiologicalConvention($("radiological").checked));
  $("layout").addEventListener("change", applyLayout);
  $("download").addEventListener("click", () => enqueue("download", () => download("labels.nii.gz?download=true",
    "labels.nii.gz")));
  $("download-seg").addEventListener("click", () => enqueue("DICOM SEG", () => download("labels.dcm", "seg.dcm")));
  if (state.config.data_dir && (!state.config.auth || state.key)) enqueue("files", listFiles);
  await state.chain;
  status("open a volume, then click on it (T toggles +/\u2212, B draws a box, Ctrl+Z undoes)");
}

window.voxprompt = {
  nv, state, mmToFileVoxel, fileVoxelToMm, worldToTile, tileToWorld,
  ready: main().catch((e) => status(`startup: ${e.message}`, "error")),
};
