// A host for our MCP Apps, the way Claude or basic-host renders one: headless Debian Chromium (Playwright
// drives /usr/bin/chromium), a host page with the official AppBridge, the app in a sandboxed iframe under the
// CSP its resource declared. The app's tools/call and resources/read go to the Python test (one JSON line
// each way on stdout/stdin), which answers them from our server; the observations come back as a last line.
// Usage: node apps_host.mjs <job.json>  with {html, csp, tool, input, result, theme, expect, screenshot, apps_dir}.
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { chromium } from "playwright-core";

const job = JSON.parse(await readFile(process.argv[2], "utf8"));
const say = (message) => process.stdout.write(JSON.stringify(message) + "\n");

// The host side of the bridge, bundled for the browser from the apps' own ext-apps install.
const { build } = createRequire(path.join(job.apps_dir, "package.json"))("esbuild");
const bridge = (await build({
  stdin: {
    contents: `import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";
               window.AppBridge = AppBridge; window.PostMessageTransport = PostMessageTransport;`,
    resolveDir: job.apps_dir,
  },
  bundle: true, format: "iife", write: false, logLevel: "error",
})).outputFiles[0].text;

// The Content-Security-Policy a host builds from `_meta.ui.csp` (the ext-apps spec's mapping).
function policy(csp) {
  const res = (csp.resourceDomains || []).join(" ");
  const connect = (csp.connectDomains || []).join(" ") || "'none'";
  return [
    "default-src 'none'", `script-src 'self' 'unsafe-inline' ${res}`, `style-src 'self' 'unsafe-inline' ${res}`,
    `img-src 'self' data: ${res}`, `media-src 'self' data: ${res}`, `font-src 'self' data: ${res}`,
    `connect-src ${connect}`, "frame-src 'none'", "object-src 'none'", "base-uri 'none'",
  ].join("; ");
}

// Answers from the Python side, matched by id.
const pending = new Map();
let next = 0;
createInterface({ input: process.stdin }).on("line", (line) => {
  const message = JSON.parse(line);
  pending.get(message.id)?.(message);
  pending.delete(message.id);
});
function ask(method, params) {
  const id = ++next;
  say({ id, method, params });
  return new Promise((resolve, reject) =>
    pending.set(id, (m) => (m.error ? reject(new Error(m.error)) : resolve(m.result))));
}

// The host's pages, served from loopback like the sandbox's media (Chromium keeps a public page from loading
// loopback media): the host page on one origin, the app on another, with the CSP header the host builds.
const hostPage = `<!doctype html><html><body style="margin:0;background:${job.theme === "dark" ? "#262624" : "#faf9f5"}">
  <script>${bridge}</script></body></html>`;
const pages = createServer((request, response) => {
  const app = request.url.startsWith("/app.html");
  response.writeHead(app || request.url === "/" ? 200 : 404, {
    "Content-Type": "text/html; charset=utf-8",
    ...(app ? { "Content-Security-Policy": policy(job.csp) } : {}),
  });
  response.end(app ? job.html : request.url === "/" ? hostPage : "");
});
await new Promise((resolve) => pages.listen(0, "127.0.0.1", resolve));
const port = pages.address().port;
const HOST_URL = `http://127.0.0.1:${port}/`;
const APP_URL = `http://localhost:${port}/app.html`; // another origin than the host page's

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
});
const observed = { console: [], violations: [], calls: [] };
try {
  const context = await browser.newContext({ viewport: { width: 640, height: 720 }, colorScheme: job.theme });
  // In every frame, before any script of its own: what a host's console would show of CSP violations.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}:${e.columnNumber} ${e.sample}`));
  });
  const page = await context.newPage();
  page.on("console", (m) => observed.console.push(`${m.type()}: ${m.text()}`));
  await page.exposeFunction("hostAsk", (method, params) => {
    observed.calls.push(method === "tools/call" ? params.name : params.uri);
    return ask(method, params);
  });
  await page.goto(HOST_URL);
  await page.evaluate(async ({ input, result, theme, appUrl, tool }) => {
    // The iframe is created here, its bridge listening before the app can send ui/initialize.
    const iframe = Object.assign(document.createElement("iframe"), { id: "app", src: appUrl });
    iframe.setAttribute("sandbox", "allow-scripts");
    iframe.style.cssText = "width:600px;height:680px;border:0;margin:20px;display:block";
    document.body.append(iframe);
    const frame = iframe.contentWindow;
    const bridge = new window.AppBridge(null, { name: "test-host", version: "1" },
      { serverTools: {}, serverResources: {}, openLinks: {} },
      { hostContext: { theme, displayMode: "inline", platform: "web", ...(tool ? { toolInfo: { id: 1, tool } } : {}) } });
    bridge.oncalltool = (params) => window.hostAsk("tools/call", params);
    bridge.onreadresource = (params) => window.hostAsk("resources/read", params);
    bridge.onsizechange = ({ height }) => { if (height) iframe.style.height = `${Math.min(height, 680)}px`; };
    const ready = new Promise((resolve) => { bridge.oninitialized = resolve; });
    await bridge.connect(new window.PostMessageTransport(frame, frame));
    await ready;
    if (input) await bridge.sendToolInput({ arguments: input });
    await bridge.sendToolResult(result);
  }, { input: job.input, result: job.result, theme: job.theme, appUrl: APP_URL, tool: job.tool });

  const app = page.frames().find((f) => f.url() === APP_URL);
  // A function, not a string: a string predicate would need eval, which the app's CSP rightly refuses.
  await app.waitForFunction((kind) => ({
    image: () => [...document.querySelectorAll("img")].some((i) => i.complete && i.naturalWidth > 0),
    video: () => [...document.querySelectorAll("video")].some((v) => v.readyState >= 2),
    audio: () => [...document.querySelectorAll("audio")].some((a) => a.readyState >= 2),
    budget: () => !!document.querySelector(".budget"),
    note: () => !!document.querySelector(".error, #note"),
  })[kind](), job.expect, { timeout: 60_000 });
  Object.assign(observed, await app.evaluate(() => ({
    text: document.body.innerText,
    images: [...document.querySelectorAll("img")].map((i) => ({ naturalWidth: i.naturalWidth, src: i.src.slice(0, 60) })),
    videos: [...document.querySelectorAll("video")].map((v) => v.readyState),
    audios: [...document.querySelectorAll("audio")].map((a) => a.readyState),
    theme: document.documentElement.getAttribute("data-theme"),
    background: getComputedStyle(document.querySelector("main")).backgroundColor,
    violations: window.__violations,
  })));
  await page.locator("#app").screenshot({ path: job.screenshot });
} catch (error) {
  observed.error = String(error?.stack || error);
} finally {
  await browser.close();
  pages.close();
}
say({ done: observed });
process.exit(0);
