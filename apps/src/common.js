// What both apps share: connecting to the host with its theme, and small DOM helpers.
import { App, applyDocumentTheme, applyHostFonts, applyHostStyleVariables } from "@modelcontextprotocol/ext-apps/app-with-deps";

function theme(ctx) {
  if (!ctx) return;
  if (ctx.theme) applyDocumentTheme(ctx.theme);
  if (ctx.styles?.variables) applyHostStyleVariables(ctx.styles.variables);
  if (ctx.styles?.css?.fonts) applyHostFonts(ctx.styles.css.fonts);
}

/** An App with its handlers set before connect() (handlers added later miss the first result). */
export async function start(name, handlers) {
  const app = new App({ name, version: "1" }, {}, { autoResize: true });
  app.onhostcontextchanged = (ctx) => theme(ctx);
  if (handlers.input) app.ontoolinput = (p) => handlers.input(p.arguments || {});
  app.ontoolresult = (result) => handlers.result(result);
  app.onteardown = async () => ({});
  await app.connect();
  theme(app.getHostContext());
  return app;
}

/** `el("p", {class: "x"}, "text", child)`: text is always set as text, never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  for (const c of children) if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

export const credits = (n) => `${Number(n ?? 0).toLocaleString("en-US")} credits`;

/** The result's text, for errors and for results this app cannot read. */
export const text = (result) => (result?.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

export function budgetLine(b) {
  if (!b) return null;
  return el("p", { class: "budget", "data-remaining": b.remaining },
    `Budget: ${credits(b.remaining)} left of ${Number(b.budget).toLocaleString("en-US")}`,
    el("span", { class: "muted" }, ` (${b.spent} spent, ${b.reserved} reserved)`));
}

export function show(root, ...nodes) {
  root.replaceChildren(...nodes.filter(Boolean));
}
