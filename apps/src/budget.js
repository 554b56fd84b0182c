// The budget app (ui://apikey/budget.html): a budget_status result as a gauge and the open tasks.
import { credits, el, show, start, text } from "./common.js";

const root = document.getElementById("app");
const pct = (n, of) => (of > 0 ? Math.max(0, Math.min(100, (100 * n) / of)) : 0);

function render(b) {
  const spent = pct(b.spent, b.budget);
  const held = pct(b.reserved, b.budget);
  const gauge = el("div", { class: "bar", role: "img", "aria-label": `${b.spent} spent, ${b.reserved} reserved of ${b.budget}` },
    el("span", { class: "spent", style: `width:${spent.toFixed(1)}%` }),
    el("span", { class: "held", style: `width:${held.toFixed(1)}%` }));
  const legend = el("div", { class: "row legend" },
    el("span", {}, el("i", { style: "background:var(--spent)" }), `Spent ${b.spent}`),
    el("span", {}, el("i", { style: "background:var(--held)" }), `Reserved ${b.reserved}`),
    el("span", { id: "remaining" }, el("i", { style: "background:var(--bg2);border:1px solid var(--line)" }), `Remaining ${b.remaining}`));
  const parts = [
    el("h1", {}, "Session budget"),
    el("p", { class: "budget", "data-remaining": b.remaining }, `${credits(b.remaining)} left of ${Number(b.budget).toLocaleString("en-US")}`),
    gauge, legend,
  ];
  const open = b.open_reservations || [];
  if (open.length) {
    const rows = open.map((r) => el("tr", {}, el("td", {}, r.purpose), el("td", { class: "muted" }, r.task_id || ""),
      el("td", { class: "num" }, r.credits)));
    parts.push(el("table", {}, el("tr", {}, el("th", {}, "Open task"), el("th", {}, "id"), el("th", { class: "num" }, "credits")), ...rows));
    if (b.open_count > open.length) parts.push(el("p", { class: "note" }, `and ${b.open_count - open.length} more`));
  } else {
    parts.push(el("p", { class: "note" }, "No open tasks."));
  }
  show(root, el("main", {}, ...parts));
}

show(root, el("main", {}, el("p", { class: "muted" }, "Waiting for the budget…")));
await start("apikey-budget", {
  result: (result) => {
    const b = result.structuredContent;
    if (result.isError || !b || typeof b.remaining !== "number") {
      show(root, el("main", {}, el("p", { class: "error" }, text(result) || "No budget in this result.")));
    } else render(b);
  },
});
