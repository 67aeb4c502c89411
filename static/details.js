// A model's details beyond its metadata: a replay of one episode, and the evaluations kept with it.
// Loaded after dashboard.js, whose helpers ($, api, headers, element, errorText, number, shortTime) it uses.
"use strict";

let replayUrl = null;

async function showReplay(name) {
  const box = $("#model-replay");
  box.hidden = false;
  const caption = $("#replay-caption");
  caption.textContent = "rendering a replay…";
  caption.classList.remove("error");
  const image = $("#replay-image");
  try {
    const response = await fetch(`/models/${encodeURIComponent(name)}/replay?format=gif&seed=0`, { headers: headers() });
    if (!response.ok) throw new Error(errorText(response.status, await response.json().catch(() => null)));
    if (replayUrl) URL.revokeObjectURL(replayUrl);
    replayUrl = URL.createObjectURL(await response.blob());
    image.src = replayUrl;
    image.hidden = false;
    image.dataset.model = name;
    const episodeReturn = Number(response.headers.get("X-Episode-Return"));
    caption.textContent =
      `${name}: one episode (seed 0, deterministic), return ${number(episodeReturn, 1)} over ` +
      `${response.headers.get("X-Episode-Length")} steps (${response.headers.get("X-Frames")} frames)`;
    caption.dataset.return = String(episodeReturn);
  } catch (error) {
    image.hidden = true;
    caption.textContent = `replay: ${error.message}`;
    caption.classList.add("error");
  }
}

function showEvaluations(model) {
  const rows = (model.evaluations || []).map((e) =>
    element(
      "tr",
      {},
      element("td", {}, shortTime(e.created_at)),
      element("td", {}, String(e.n_episodes)),
      element("td", {}, e.seed === null || e.seed === undefined ? "random" : String(e.seed)),
      element("td", {}, `${number(e.mean_return, 1)} ± ${number(e.std_return, 1)}`),
    ),
  );
  $("#evaluations tbody").replaceChildren(...rows);
  $("#evaluations").hidden = rows.length === 0;
}

async function evaluateModel(name) {
  const caption = $("#evaluate-result");
  caption.textContent = "evaluating…";
  try {
    const answer = await api("POST", `/models/${encodeURIComponent(name)}/evaluate`, { n_episodes: 10, seed: 0 });
    caption.textContent = `mean return ${number(answer.mean_return, 1)} ± ${number(answer.std_return, 1)} over 10 episodes`;
    showEvaluations(await api("GET", `/models/${encodeURIComponent(name)}`));
  } catch (error) {
    caption.textContent = `evaluate: ${error.message}`;
  }
}

function showModelExtras(model) {
  $("#model-extras").hidden = false;
  $("#model-extras").dataset.model = model.name;
  $("#evaluate-result").textContent = "";
  showEvaluations(model);
  showReplay(model.name);
}
