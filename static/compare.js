// Comparing runs: the return curves of the ticked jobs on one chart, a legend naming the settings in which they
// differ (lr=1e-3 vs lr=3e-4), and a table of their final and best returns. The selection lives in the page's URL
// (?compare=<job id>,<job id>), so the view can be shared. Uses dashboard.js's helpers ($, api, element, number).
"use strict";

const COMPARE_COLOURS = ["#2f6fdb", "#c0392b", "#2f9e5b", "#8e44ad", "#d68910", "#17a589", "#7f8c8d", "#e84393"];
// Settings that name or place a run rather than shape its learning.
const NOT_SETTINGS = new Set(["model_name", "overwrite", "checkpoint_interval", "num_cpus", "num_gpus"]);
const SHORT_NAMES = { learning_rate: "lr", total_timesteps: "steps", reward_function_type: "reward" };
const compareState = { chart: null, runs: [] };

function compareSelection() {
  const raw = new URLSearchParams(location.search).get("compare");
  return raw ? raw.split(",").filter(Boolean) : [];
}

function setCompareSelection(ids) {
  const url = new URL(location.href);
  if (ids.length) url.searchParams.set("compare", ids.join(","));
  else url.searchParams.delete("compare");
  history.replaceState(null, "", url);
}

function toggleCompare(jobId, on) {
  const ids = compareSelection().filter((id) => id !== jobId);
  if (on) ids.push(jobId);
  setCompareSelection(ids);
  renderCompare();
}

function settingText(value) {
  if (typeof value === "number" && value !== 0 && Math.abs(value) < 0.01) {
    return value.toExponential();
  }
  return Array.isArray(value) ? `[${value.join(",")}]` : String(value);
}

// For each run, "name=value" for every setting whose value is not the same in all of them.
function differingSettings(configs) {
  const keys = [...new Set(configs.flatMap((config) => Object.keys(config)))].filter((key) => !NOT_SETTINGS.has(key));
  const differing = keys.filter((key) => new Set(configs.map((config) => JSON.stringify(config[key] ?? null))).size > 1);
  return configs.map((config) =>
    differing.map((key) => `${SHORT_NAMES[key] || key}=${settingText(config[key] ?? null)}`).join(" "),
  );
}

async function loadRun(jobId) {
  const [status, metrics] = await Promise.all([
    api("GET", `/training/${jobId}/status`),
    api("GET", `/training/${jobId}/metrics`),
  ]);
  const model = status.model_saved ? await api("GET", `/models/${status.model_name}`).catch(() => null) : null;
  return { status, points: metrics.points, evaluation: model && model.evaluations ? model.evaluations[0] : null };
}

async function renderCompare() {
  const ids = compareSelection();
  const section = $("#compare-section");
  section.hidden = ids.length === 0;
  if (!ids.length) return;
  const runs = (await Promise.all(ids.map((id) => loadRun(id).catch(() => null)))).filter(Boolean);
  if (JSON.stringify(ids) !== JSON.stringify(compareSelection())) return; // a newer tick took over
  const labels = differingSettings(runs.map((run) => run.status.config));
  runs.forEach((run, i) => {
    run.label = labels[i] || run.status.job_id.slice(0, 8);
    run.colour = COMPARE_COLOURS[i % COMPARE_COLOURS.length];
  });
  compareState.runs = runs;
  drawCompareChart(runs);
  drawCompareTable(runs);
}

function drawCompareChart(runs) {
  const steps = [...new Set(runs.flatMap((run) => run.points.map((p) => p.timesteps)))].sort((a, b) => a - b);
  const data = [
    steps,
    ...runs.map((run) => {
      const byStep = new Map(run.points.map((p) => [p.timesteps, p.episode_return_mean]));
      return steps.map((step) => (byStep.has(step) ? byStep.get(step) : null));
    }),
  ];
  const target = $("#chart-compare");
  target.replaceChildren();
  compareState.chart = new uPlot(
    {
      title: "Episode return",
      width: Math.max(300, target.clientWidth || 800),
      height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "timesteps" }, {}],
      series: [{ label: "timesteps" }, ...runs.map((run) => ({ label: run.label, stroke: run.colour, spanGaps: true }))],
    },
    data,
    target,
  );
  target.dataset.series = String(runs.length);
}

function drawCompareTable(runs) {
  const rows = runs.map((run) => {
    const returns = run.points.map((p) => p.episode_return_mean).filter((v) => v !== null && v !== undefined);
    const final = returns.length ? returns[returns.length - 1] : null;
    const best = returns.length ? Math.max(...returns) : null;
    const evaluation = run.evaluation
      ? `${number(run.evaluation.mean_return)} ± ${number(run.evaluation.std_return)} (${run.evaluation.n_episodes} ep.)`
      : "";
    return element(
      "tr",
      { "data-job-id": run.status.job_id },
      element("td", {}, element("span", { class: "swatch", style: `background: ${run.colour}` }), run.label),
      element("td", { title: run.status.job_id }, run.status.job_id.slice(0, 8)),
      element("td", {}, run.status.model_name),
      element("td", {}, run.status.status),
      element("td", {}, number(final)),
      element("td", {}, number(best)),
      element("td", {}, evaluation),
      element("td", {}, element("button", { class: "small", onclick: () => toggleCompare(run.status.job_id, false) }, "remove")),
    );
  });
  $("#compare-table tbody").replaceChildren(...rows);
}

renderCompare();
