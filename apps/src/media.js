// The media viewer (ui://apikey/media.html): a generate_* or poll_task result, followed until the task ends.
import { budgetLine, credits, el, show, start, text } from "./common.js";

const root = document.getElementById("app");
const ENDED = new Set(["succeeded", "failed"]);
const POLL_WAIT = 20; // seconds per poll_task call; the server caps it
let input = {};
let following = null;
let app;

function kindOf(output, modality) {
  const mime = output.mime_type || "";
  if (mime.startsWith("image/") || (!mime && modality === "image")) return "image";
  if (mime.startsWith("video/") || (!mime && modality === "video")) return "video";
  return "audio";
}

/** An image from its link; where the host blocks the link's origin, the preview resource as a data: URI. */
function image(task, index, output) {
  const img = el("img", { alt: `Result ${index + 1} of ${task.task_id}`, "data-index": index });
  let fellBack = false;
  img.addEventListener("error", async () => {
    if (fellBack) return;
    fellBack = true;
    try {
      const uri = `apikey://tasks/${encodeURIComponent(task.task_id)}/outputs/${index}/preview`;
      const read = await app.readServerResource({ uri });
      const item = read.contents?.[0];
      if (item?.text?.startsWith("data:image/")) img.src = item.text;
      else if (item?.blob) img.src = `data:${item.mimeType};base64,${item.blob}`;
    } catch (e) {
      img.replaceWith(el("p", { class: "note" }, `The image cannot be shown here; open ${output.url}`));
    }
  });
  img.src = output.url;
  return img;
}

function outputs(task) {
  const list = el("div", { class: "outputs" });
  (task.outputs || []).forEach((output, i) => {
    const kind = kindOf(output, task.modality);
    if (kind === "image") list.append(image(task, i, output));
    else list.append(el(kind, { controls: "", preload: "auto", src: output.url, "data-index": i }));
    if (output.path) list.append(el("p", { class: "note" }, `Saved at ${output.path}`));
  });
  return list;
}

function progress(task) {
  const share = task.status === "running" ? Math.max(0.05, Math.min(task.progress ?? 0.1, 0.99)) : 0.03;
  return el("div", { class: "bar", role: "progressbar", "aria-valuenow": Math.round(share * 100) },
    el("span", { class: "done", style: `width:${(share * 100).toFixed(1)}%` }));
}

function render(task, note) {
  const model = task.model || input.model || "model";
  const tool = app?.getHostContext()?.toolInfo?.tool?.name; // which tool's result the host shows here
  const what = task.modality || { generate_image: "image", generate_video: "video", generate_music: "music" }[tool] || "media";
  const head = el("div", { class: "row" }, el("h1", {}, `${what} · ${model}`),
    el("span", { class: `badge ${task.status}`, id: "status" }, task.status));
  const parts = [head];
  if (input.prompt) parts.push(el("p", { class: "muted" }, input.prompt));
  if (task.status === "succeeded") {
    parts.push(outputs(task));
    parts.push(el("p", { class: "cost", "data-credits": task.credits_charged ?? "" },
      `Cost: ${credits(task.credits_charged)}`));
  } else if (task.status === "failed") {
    parts.push(el("p", { class: "error" }, `Failed: ${task.error || "the gateway gave no reason"}`));
    parts.push(el("p", {}, `No credits were charged: the ${task.credits_reserved ?? ""} reserved credits were released.`.replace("the  reserved", "the reserved")));
  } else {
    parts.push(progress(task));
    if (task.credits_reserved != null) parts.push(el("p", { class: "cost" }, `${credits(task.credits_reserved)} reserved`));
  }
  parts.push(budgetLine(task.budget));
  if (note) parts.push(el("p", { class: "note", id: "note" }, note));
  parts.push(el("p", { class: "note muted" }, `Task ${task.task_id}`));
  show(root, el("main", {}, ...parts));
}

/** Poll the task through the host until it ends; a host that refuses app tool calls gets a plain note. */
async function follow(task) {
  const id = task.task_id;
  following = id;
  let current = task;
  while (following === id && !ENDED.has(current.status)) {
    let result;
    try {
      result = await app.callServerTool({ name: "poll_task", arguments: { task_id: id, wait_seconds: POLL_WAIT } });
    } catch (e) {
      render(current, `The task is running. This host does not let the app follow it: ask the agent to call poll_task with task_id ${id}.`);
      return;
    }
    if (following !== id) return;
    if (result.isError || !result.structuredContent) {
      render(current, text(result) || "poll_task failed; ask the agent to poll the task.");
      return;
    }
    current = result.structuredContent;
    render(current);
  }
}

function onResult(result) {
  const task = result.structuredContent;
  if (result.isError || !task || !task.task_id) {
    following = null;
    show(root, el("main", {}, el("p", { class: "error" }, text(result) || "No task in this result.")));
    return;
  }
  render(task);
  if (!ENDED.has(task.status)) follow(task);
}

show(root, el("main", {}, el("p", { class: "muted" }, "Waiting for the task…")));
app = await start("apikey-media", {
  input: (args) => { input = { ...args }; },
  result: onResult,
});
