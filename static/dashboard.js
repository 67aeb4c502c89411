// The GRPO dashboard: plain JavaScript over the service's JSON API and its Server-Sent Events stream.
"use strict";

const ACTIVE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["interrupted", "stopped", "failed"]);
const JOBS_POLL_MS = 1000;
const $ = (selector) => document.querySelector(selector);
const JOBS_PAGE = 25;
const state = { jobs: new Map(), selectedJob: null, stream: null, charts: null, points: [], jobsOffset: 0, jobsTotal: 0 };

// requests: every one carries the API key when one is set

const apiKeyInput = $("#api-key");
apiKeyInput.value = localStorage.getItem("grpo-api-key") || "";
apiKeyInput.addEventListener("change", () => {
  localStorage.setItem("grpo-api-key", apiKeyInput.value);
  // What the page could not read without the key (or with a wrong one) is read again with it.
  showResult($("#train-result"), "", false);
  showResult($("#model-info"), "", false);
  loadRewardFunctions();
  refreshJobs();
  refreshModels();
});

function headers(extra = {}) {
  const key = apiKeyInput.value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

// The API's error answer in words: 'detail' is a sentence, or (422) a list of field errors.
function errorText(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${e.loc.filter((part) => part !== "body").join(".") || "request"}: ${e.msg}`).join("\n");
  }
  return detail ? String(detail) : `HTTP ${status}`;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(response.status, data));
  return data;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function showResult(node, text, isError) {
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

const shortTime = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const number = (value, digits = 1) => (value === null || value === undefined ? "" : Number(value).toFixed(digits));

// health

async function refreshHealth() {
  try {
    const health = await api("GET", "/health");
    $("#health").textContent =
      `${health.status}: ${health.active_jobs} running, ${health.queued_jobs} queued, ${health.loaded_models} loaded`;
  } catch (error) {
    $("#health").textContent = `unreachable: ${error.message}`;
  }
}

// jobs table with live progress bars

function progressBar(progress) {
  const percent = Math.round(progress * 100);
  const bar = element("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" });
  bar.setAttribute("aria-valuenow", String(percent));
  bar.append(element("div", { class: "fill", style: `width: ${percent}%` }), element("span", {}, `${percent}%`));
  return bar;
}

function jobRow(job) {
  const actions = element("td");
  actions.append(element("button", { class: "small", onclick: () => selectJob(job.job_id) }, "curves"));
  if (ACTIVE.has(job.status)) {
    actions.append(element("button", { class: "small danger", onclick: () => stopJob(job.job_id) }, "stop"));
  }
  if (RESUMABLE.has(job.status)) {
    actions.append(element("button", { class: "small", onclick: () => resumeJob(job.job_id) }, "resume"));
  }
  const tick = element("input", { type: "checkbox", class: "compare-tick", "aria-label": "compare" });
  tick.checked = compareSelection().includes(job.job_id);
  tick.addEventListener("change", () => toggleCompare(job.job_id, tick.checked));
  const row = element(
    "tr",
    { "data-job-id": job.job_id, "data-status": job.status },
    element("td", {}, tick),
    element("td", { title: job.job_id }, job.job_id.slice(0, 8)),
    element("td", {}, job.model_name),
    element("td", {}, job.env_name),
    element("td", { class: `status-${job.status}` }, job.status),
    element("td", {}, progressBar(job.progress)),
    element("td", {}, shortTime(job.created_at)),
    actions,
  );
  if (job.job_id === state.selectedJob) row.classList.add("selected");
  return row;
}

function renderJobs() {
  const body = $("#jobs tbody");
  const jobs = [...state.jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  body.replaceChildren(...jobs.map(jobRow));
}

// One page of the jobs, newest first, as the filters above the table narrow them.
function jobsQuery() {
  const params = new URLSearchParams({ limit: String(JOBS_PAGE), offset: String(state.jobsOffset), order: "newest" });
  for (const [name, value] of new FormData($("#jobs-filter")).entries()) {
    if (String(value).trim()) params.set(name, String(value).trim());
  }
  return params;
}

function renderPager() {
  const first = state.jobsTotal ? state.jobsOffset + 1 : 0;
  const last = Math.min(state.jobsOffset + JOBS_PAGE, state.jobsTotal);
  $("#jobs-count").textContent = `(${first}–${last} of ${state.jobsTotal})`;
  $("#jobs-prev").disabled = state.jobsOffset === 0;
  $("#jobs-next").disabled = last >= state.jobsTotal;
}

function pageJobs(step) {
  state.jobsOffset = Math.max(0, state.jobsOffset + step * JOBS_PAGE);
  refreshJobs();
}

$("#jobs-prev").addEventListener("click", () => pageJobs(-1));
$("#jobs-next").addEventListener("click", () => pageJobs(1));
$("#jobs-filter").addEventListener("input", () => {
  state.jobsOffset = 0;
  refreshJobs();
});
$("#jobs-filter").addEventListener("submit", (event) => event.preventDefault());

async function refreshJobs() {
  try {
    const { jobs, total } = await api("GET", `/training/jobs?${jobsQuery()}`);
    state.jobsTotal = total;
    renderPager();
    const finishedNow = jobs.some((job) => ACTIVE.has(state.jobs.get(job.job_id)?.status) && !ACTIVE.has(job.status));
    // A poll answered just after a newer stream event must not move a bar back.
    for (const job of jobs) {
      const known = state.jobs.get(job.job_id);
      if (known && known.status === job.status) job.progress = Math.max(job.progress, known.progress);
    }
    state.jobs = new Map(jobs.map((job) => [job.job_id, job]));
    renderJobs();
    // On opening the page, show the curves of the newest job.
    if (state.selectedJob === null && jobs.length) {
      selectJob(jobs.reduce((newest, job) => (job.created_at > newest.created_at ? job : newest)).job_id);
    }
    if (finishedNow) refreshModels();
  } catch (error) {
    $("#health").textContent = `jobs: ${error.message}`;
  }
}

async function resumeJob(jobId) {
  try {
    const answer = await api("POST", `/training/${jobId}/resume`);
    showResult($("#train-result"), answer.message, false);
  } catch (error) {
    showResult($("#train-result"), error.message, true);
  }
  await refreshJobs();
  selectJob(jobId);
}

async function stopJob(jobId) {
  try {
    const answer = await api("POST", `/training/${jobId}/stop`);
    showResult($("#train-result"), answer.message, false);
  } catch (error) {
    showResult($("#train-result"), error.message, true);
  }
  refreshJobs();
}

// learning curves, fed by the job's event stream

function makeChart(target, title, series) {
  const width = Math.max(300, target.clientWidth || 500);
  return new uPlot(
    {
      title,
      width,
      height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "timesteps" }, {}],
      series: [{ label: "timesteps" }, ...series.map(([label, stroke]) => ({ label, stroke, spanGaps: true }))],
    },
    [[], ...series.map(() => [])],
    target,
  );
}

function resetCharts() {
  for (const id of ["#chart-return", "#chart-loss"]) {
    $(id).replaceChildren();
    $(id).dataset.points = "0";
  }
  state.points = [];
  state.charts = {
    return: makeChart($("#chart-return"), "Episode return", [["mean return", "#2f6fdb"]]),
    loss: makeChart($("#chart-loss"), "Losses", [
      ["policy gradient", "#c0392b"],
      ["entropy", "#8e44ad"],
      ["total", "#2f9e5b"],
    ]),
  };
}

function drawCharts() {
  const points = state.points;
  const steps = points.map((p) => p.timesteps);
  state.charts.return.setData([steps, points.map((p) => p.episode_return_mean)]);
  state.charts.loss.setData([
    steps,
    points.map((p) => p.policy_gradient_loss),
    points.map((p) => p.entropy_loss),
    points.map((p) => p.loss),
  ]);
  for (const id of ["#chart-return", "#chart-loss"]) $(id).dataset.points = String(points.length);
}

// Server-Sent Events read through fetch, so that the API key header goes along (EventSource cannot send one).
async function readEvents(path, onEvent, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw new Error(errorText(response.status, await response.json().catch(() => null)));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

function onJobEvent(jobId, name, data) {
  if (name === "metrics") {
    state.points.push(data);
    drawCharts();
  } else if (name === "progress" || name === "end") {
    const known = state.jobs.get(jobId);
    state.jobs.set(jobId, { ...(known || {}), ...data });
    renderJobs();
    const detail = data.error_message || data.message || "";
    $("#curves-status").textContent =
      `${data.status}: ${data.current_timesteps} / ${data.total_timesteps} timesteps${detail ? ` (${detail})` : ""}`;
    if (name === "end") refreshModels();
  }
}

async function selectJob(jobId) {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  state.selectedJob = jobId;
  $("#curves-job").textContent = `job ${jobId.slice(0, 8)}`;
  renderJobs();
  resetCharts();
  let ended = false;
  // Reconnects after a dropped connection, asking only for the points after the last one it has.
  while (!ended && !controller.signal.aborted) {
    const since = state.points.length ? state.points[state.points.length - 1].timesteps : null;
    const path = `/training/${jobId}/events` + (since === null ? "" : `?since=${since}`);
    try {
      await readEvents(path, (name, data) => {
        ended ||= name === "end";
        onJobEvent(jobId, name, data);
      }, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      $("#curves-status").textContent = `event stream: ${error.message}; retrying`;
    }
    if (!ended) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// the train form

const trainForm = $("#train-form");
const INTEGER_FIELDS = ["total_timesteps", "n_steps", "batch_size", "n_epochs", "group_size", "n_envs", "seed"];

// Only the fields filled in: the API fills in its own defaults for the rest.
function trainRequest() {
  const form = new FormData(trainForm);
  const body = {};
  for (const [name, raw] of form.entries()) {
    const value = String(raw).trim();
    if (value === "" || name === "overwrite") continue;
    if (INTEGER_FIELDS.includes(name)) body[name] = /^-?\d+$/.test(value) ? Number(value) : value;
    else if (name === "learning_rate") body[name] = Number.isNaN(Number(value)) ? value : Number(value);
    else if (name === "net_arch") body[name] = value.split(/[\s,]+/).filter(Boolean).map((v) => (/^\d+$/.test(v) ? Number(v) : v));
    else body[name] = value;
  }
  if (form.get("overwrite")) body.overwrite = true;
  return body;
}

trainForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("#train-result");
  try {
    const answer = await api("POST", "/train", trainRequest());
    showResult(result, `${answer.message}: job ${answer.job_id.slice(0, 8)}, model ${answer.config.model_name}`, false);
    await refreshJobs();
    selectJob(answer.job_id);
  } catch (error) {
    showResult(result, error.message, true);
  }
});

async function loadRewardFunctions() {
  try {
    const { reward_functions } = await api("GET", "/reward-functions");
    const select = trainForm.elements.reward_function_type;
    // Listed afresh each time, after the first option ("default for the env"), keeping the choice made.
    const chosen = select.value;
    select.replaceChildren(
      select.options[0],
      ...reward_functions.map((fn) => element("option", { value: fn.name, title: fn.description }, fn.name)),
    );
    select.value = chosen;
  } catch (error) {
    showResult($("#train-result"), `reward functions: ${error.message}`, true);
  }
}

// models, their metadata, delete, and the inference panel

async function refreshModels() {
  try {
    const { models } = await api("GET", "/models");
    const details = await Promise.all(models.map((model) => api("GET", `/models/${model.name}`).catch(() => model)));
    $("#models tbody").replaceChildren(...details.map(modelRow));
    const select = $("#inference-form").elements.model_name;
    const chosen = select.value;
    select.replaceChildren(...models.map((model) => element("option", { value: model.name }, model.name)));
    if (models.some((model) => model.name === chosen)) select.value = chosen;
  } catch (error) {
    showResult($("#model-info"), `models: ${error.message}`, true);
  }
}

function modelRow(model) {
  const metrics = model.metrics || {};
  return element(
    "tr",
    { "data-model": model.name },
    element("td", {}, model.name),
    element("td", {}, model.env_name || ""),
    element("td", {}, model.timesteps === undefined || model.timesteps === null ? "" : String(model.timesteps)),
    element("td", {}, number(metrics["rollout/ep_rew_mean"])),
    element("td", {}, `${(model.size_bytes / 1024).toFixed(0)} KiB`),
    element("td", {}, model.status),
    element("td", {}, shortTime(model.created_at)),
    element(
      "td",
      {},
      element("button", { class: "small", onclick: () => showModel(model) }, "details"),
      element("button", { class: "small", onclick: () => tryModel(model.name) }, "try"),
      element("button", { class: "small danger", onclick: () => deleteModel(model.name) }, "delete"),
    ),
  );
}

function showModel(model) {
  const info = $("#model-info");
  info.hidden = false;
  showResult(info, JSON.stringify(model, null, 2), false);
  showModelExtras(model);
}

function tryModel(name) {
  $("#inference-form").elements.model_name.value = name;
  $("#inference-form").scrollIntoView({ behavior: "smooth" });
}

async function deleteModel(name) {
  if (!confirm(`Delete model ${name}?`)) return;
  const info = $("#model-info");
  info.hidden = false;
  try {
    showResult(info, (await api("DELETE", `/models/${name}`)).message, false);
  } catch (error) {
    showResult(info, error.message, true);
  }
  refreshModels();
}

$("#inference-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  const result = $("#inference-result");
  let observation;
  try {
    observation = JSON.parse(form.observation.value);
  } catch {
    showResult(result, "The observation must be JSON, e.g. [0.1, 0.0, 0.05, 0.0]", true);
    return;
  }
  try {
    const body = { model_name: form.model_name.value, observation, deterministic: form.deterministic.checked };
    showResult(result, JSON.stringify(await api("POST", "/inference", body), null, 2), false);
  } catch (error) {
    showResult(result, error.message, true);
  }
});

// start

resetCharts();
loadRewardFunctions();
refreshHealth();
refreshJobs();
refreshModels();
setInterval(refreshJobs, JOBS_POLL_MS);
setInterval(refreshHealth, 5 * JOBS_POLL_MS);
