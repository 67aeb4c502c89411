// Studies: start an Optuna search from the form, list the studies, stop or resume one, and chart a study's trial
// values (complete trials' evaluated returns; pruned ones at their last reported return). Uses dashboard.js's
// helpers ($, api, element, number, shortTime, showResult).
"use strict";

const STUDIES_POLL_MS = 3000;
const studyState = { selected: null, chart: null };

async function refreshStudies() {
  try {
    const { studies } = await api("GET", "/studies");
    $("#studies tbody").replaceChildren(...studies.reverse().map(studyRow));
    if (studyState.selected) showStudy(studyState.selected);
  } catch (error) {
    showResult($("#study-result"), `studies: ${error.message}`, true);
  }
}

function studyRow(study) {
  const counts = study.trials;
  const actions = element(
    "td",
    {},
    element("button", { class: "small", onclick: () => selectStudy(study.study_id) }, "trials"),
  );
  if (study.status === "running") {
    actions.append(element("button", { class: "small danger", onclick: () => studyAction(study.study_id, "stop") }, "stop"));
  } else if (study.status === "stopped" || study.status === "interrupted") {
    actions.append(element("button", { class: "small", onclick: () => studyAction(study.study_id, "resume") }, "resume"));
  }
  const row = element(
    "tr",
    { "data-study-id": study.study_id, "data-status": study.status },
    element("td", {}, study.study_id),
    element("td", {}, study.env_name),
    element("td", { class: `status-${study.status}` }, study.status),
    element("td", {}, `${counts.complete + counts.pruned} / ${study.n_trials}`),
    element("td", {}, `${counts.pruned} pruned, ${counts.fail} failed, ${counts.running} running`),
    element("td", {}, number(study.best_value)),
    element("td", {}, study.best_model_name),
    element("td", {}, shortTime(study.created_at)),
    actions,
  );
  if (study.study_id === studyState.selected) row.classList.add("selected");
  return row;
}

async function studyAction(studyId, action) {
  try {
    showResult($("#study-result"), (await api("POST", `/studies/${studyId}/${action}`)).message, false);
  } catch (error) {
    showResult($("#study-result"), error.message, true);
  }
  refreshStudies();
}

function selectStudy(studyId) {
  studyState.selected = studyId;
  refreshStudies();
}

async function showStudy(studyId) {
  const study = await api("GET", `/studies/${studyId}`);
  $("#study-detail").hidden = false;
  $("#study-title").textContent = `study ${studyId}: ${study.status}`;
  const trials = study.trials_list;
  const lastReported = (t) => {
    const steps = Object.keys(t.intermediate_values).map(Number);
    return steps.length ? t.intermediate_values[Math.max(...steps)] : null;
  };
  const data = [
    trials.map((t) => t.number),
    trials.map((t) => (t.state === "complete" ? t.value : null)),
    trials.map((t) => (t.state === "pruned" ? lastReported(t) : null)),
  ];
  const target = $("#chart-study");
  if (!studyState.chart || target.dataset.study !== studyId) {
    target.replaceChildren();
    const dots = (stroke) => ({ stroke, width: 0, points: { show: true, size: 8, fill: stroke } });
    studyState.chart = new uPlot(
      {
        title: "Trial values",
        width: Math.max(300, target.clientWidth || 700),
        height: 240,
        scales: { x: { time: false } },
        axes: [{ label: "trial" }, { label: "return" }],
        series: [{ label: "trial" }, { label: "evaluated (complete)", ...dots("#2f6fdb") }, { label: "pruned at", ...dots("#c0392b") }],
      },
      data,
      target,
    );
    target.dataset.study = studyId;
  } else {
    studyState.chart.setData(data);
  }
  target.dataset.trials = String(trials.length);
  const preset = $("#study-preset");
  preset.hidden = !study.best_preset_yaml;
  preset.textContent = study.best_preset_yaml || "";
}

$("#study-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  const body = {
    env_name: form.env_name.value.trim(),
    n_trials: Number(form.n_trials.value),
    total_timesteps: Number(form.total_timesteps.value),
  };
  if (form.reward_env.checked) body.fixed = { reward_function_type: "env" };
  try {
    const answer = await api("POST", "/studies", body);
    showResult($("#study-result"), `${answer.message}: study ${answer.study_id}, best model ${answer.best_model_name}`, false);
    selectStudy(answer.study_id);
  } catch (error) {
    showResult($("#study-result"), error.message, true);
  }
});

refreshStudies();
setInterval(refreshStudies, STUDIES_POLL_MS);
