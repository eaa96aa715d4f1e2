// Bundle the viewer (NiiVue included) into voxprompt/server/static/viewer.js, plus the licences of
// every bundled npm package in THIRD_PARTY_LICENSES.txt. Run by `make web` (npm ci && node build.mjs).
import { build } from "esbuild";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "voxprompt", "server", "static");

const result = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  legalComments: "none",
  metafile: true,
  outfile: join(out, "viewer.js"),
  logLevel: "info",
});

// Packages whose code ended up in the bundle -> their licence texts.
const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//g);
  if (m) packages.add(m[m.length - 1].replace(/^node_modules\//, "").replace(/\/$/, ""));
}
const sections = [];
for (const name of [...packages].sort()) {
  const dir = join(here, "node_modules", name);
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = existsSync(dir) ? readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f)) : undefined;
  const text = file ? readFileSync(join(dir, file), "utf8").trim() : `(no licence file; package.json says ${pkg.license})`;
  sections.push(`${name} ${pkg.version} (${pkg.license})\n${"-".repeat(60)}\n${text}\n`);
}
writeFileSync(join(out, "THIRD_PARTY_LICENSES.txt"),
  `Third-party code bundled into viewer.js by web/build.mjs\n\n${sections.join("\n")}`);
console.log(`bundled packages: ${[...packages].sort().join(", ")}`);
