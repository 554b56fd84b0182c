// Builds each MCP App into one self-contained HTML file (script and style inlined, nothing from a CDN) under
// src/apikey_mcp/ui/, which the server serves as a ui:// resource. `node apps/build.mjs --check` builds in
// memory and fails when a committed file differs (CI runs it).
import { build } from "esbuild";
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "..", "src", "apikey_mcp", "ui");
const APPS = { media: "Media result", budget: "Session budget" };
const MAX_BYTES = 1024 * 1024; // some hosts refuse a larger app

async function html(name, title) {
  const bundled = await build({
    entryPoints: [path.join(here, "src", `${name}.js`)],
    bundle: true, minify: true, format: "esm", target: "es2022", platform: "browser",
    legalComments: "none", write: false, logLevel: "warning",
  });
  const js = bundled.outputFiles[0].text.replaceAll("</script", "<\\/script");
  const css = (await readFile(path.join(here, "src", "style.css"), "utf8")).replaceAll("</style", "<\\/style");
  // zod probes `new Function` when first used unless told it is jitless: under the app's CSP (no
  // 'unsafe-eval') that probe is a reported violation, so the flag is set before the bundle runs.
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title><style>${css}</style></head>
<body><div id="app"></div>
<script>globalThis.__zod_globalConfig = { jitless: true };</script>
<script type="module">${js}</script></body></html>
`;
}

const check = process.argv.includes("--check");
let stale = [];
for (const [name, title] of Object.entries(APPS)) {
  const text = await html(name, title);
  const size = Buffer.byteLength(text);
  if (size > MAX_BYTES) throw new Error(`${name}.html is ${size} bytes, over the ${MAX_BYTES}-byte cap`);
  const file = path.join(out, `${name}.html`);
  if (check) {
    const committed = await readFile(file, "utf8").catch(() => "");
    if (committed !== text) stale.push(file);
  } else {
    await writeFile(file, text);
    console.log(`${path.relative(process.cwd(), file)}: ${size} bytes`);
  }
}
if (stale.length) {
  console.error(`Out of date (rebuild with: npm --prefix apps run build): ${stale.join(", ")}`);
  process.exit(1);
}
