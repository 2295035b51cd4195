// The demo page: one user's live sequence, recommendations and trending, all from the service's API.
// A click is posted as an event; the page then polls the profile until the stream has applied it.
// Recommendations shown are posted as impressions, and clicks on them carry the answer's request_id:
// within an experiment the stream counts both for the user's arm (schemas/EXPERIMENTS.md).
"use strict";

const RECOMMENDATIONS = 12;
const TRENDING = 10;
const SIMILAR = 8;
const APPLY_POLL_MS = 50;
const APPLY_GIVE_UP_MS = 30000;
const REFRESH_MS = 5000;
const READ_RETRIES = 5;
const READ_RETRY_MS = 200;

const page = { user: null, modelVersion: null, shownEvents: new Set() };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  let response = await fetch(path, options);
  // 503: Redis did not answer within the service's budget (a busy moment); a read is worth asking again.
  for (let retry = 1; response.status === 503 && !options.method && retry <= READ_RETRIES; retry++) {
    await new Promise((resolve) => setTimeout(resolve, READ_RETRY_MS * retry));
    response = await fetch(path, options);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reasons = body.reasons ? `: ${body.reasons.join("; ")}` : body.error ? `: ${body.error}` : "";
    throw new Error(`${options.method || "GET"} ${path} → ${response.status}${reasons}`);
  }
  return body;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function itemRow(item, { score, reasons, onClick } = {}) {
  const row = element("li", onClick ? "clickable" : "");
  row.dataset.itemId = item.item_id;
  // The score floats right, so it comes before the title it sits beside.
  if (score !== undefined) row.append(element("span", "score", score.toFixed(3)));
  row.append(element("span", "title", item.title || item.item_id));
  if (reasons && reasons.length) {
    const names = reasons.map((reason) => reason.title || reason.item_id).join(", ");
    row.append(element("span", "reasons", `because you watched ${names}`));
  }
  if (onClick) {
    row.title = "click: publish a click event for this item";
    row.addEventListener("click", () => clickItem(item.item_id, onClick.requestId));
  }
  return row;
}

function renderSequence(profile) {
  const list = $("sequence");
  list.replaceChildren();
  for (const entry of [...profile.sequence].reverse()) {
    const row = itemRow(entry);
    row.dataset.eventId = entry.event_id;
    row.prepend(element("span", "kind", entry.value != null ? `${entry.type} ${entry.value}` : entry.type));
    row.append(element("span", "when", ` ${new Date(entry.ts).toLocaleString()}`));
    if (page.shownEvents.size && !page.shownEvents.has(entry.event_id)) row.classList.add("fresh");
    list.append(row);
  }
  page.shownEvents = new Set(profile.sequence.map((entry) => entry.event_id));
  if (!profile.sequence.length) list.append(element("li", "", "no events yet: click an item"));
}

async function loadRecommendations() {
  const query = new URLSearchParams({ user_id: page.user, k: RECOMMENDATIONS, exclude_seen: true, explain: true });
  const answer = await api(`/v1/recommendations?${query}`);
  const onClick = { requestId: answer.request_id };
  $("recommendations").replaceChildren(
    ...answer.items.map((item) => itemRow(item, { score: item.score, reasons: item.reasons, onClick })),
  );
  $("arm").textContent = answer.arm ?? "none";
  await publish(answer.items.map((item) => shownEvent(item.item_id, answer.request_id)));
  const asOf = answer.features_as_of ? new Date(answer.features_as_of).toLocaleString() : "no events";
  const fallback = answer.fallback || answer.reason ? ` · fallback: ${answer.reason}` : "";
  $("recommendation-meta").textContent = `features as of ${asOf} · ${answer.took_ms} ms${fallback}`;
  noticeModel(answer.model_version);
  return answer;
}

async function loadTrending() {
  const answer = await api(`/v1/trending?k=${TRENDING}`);
  // Ranked by decayed popularity; the scores themselves mean little next to each other, so only the order shows.
  $("trending").replaceChildren(...answer.items.map((item) => itemRow(item, { onClick: {} })));
}

// The items most like the one just clicked; an item the live model cannot answer for hides the list.
async function loadSimilar(itemId, title) {
  try {
    const answer = await api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=${SIMILAR}`);
    $("similar-of").textContent = title || itemId;
    $("similar").replaceChildren(...answer.items.map((item) => itemRow(item, { onClick: {} })));
    $("similar-section").hidden = false;
  } catch (error) {
    $("similar-section").hidden = true;
  }
}

function noticeModel(version) {
  if (version == null || version === page.modelVersion) return;
  if (page.modelVersion !== null) {
    $("swap-notice").textContent = `New model v${version} swapped in at ${new Date().toLocaleTimeString()} (was v${page.modelVersion}).`;
    $("swap-notice").hidden = false;
  }
  page.modelVersion = version;
  $("model-version").textContent = `v${version}`;
}

async function showUser(user) {
  page.user = user;
  page.shownEvents = new Set();
  $("user-input").value = user;
  $("user-name").textContent = user;
  history.replaceState(null, "", `?user_id=${encodeURIComponent(user)}`);
  say(`loading user ${user}…`);
  try {
    const [profile] = await Promise.all([api(`/v1/users/${encodeURIComponent(user)}/profile`), loadRecommendations()]);
    renderSequence(profile);
    say(`user ${user}: ${profile.sequence.length} events in the live sequence. Click any item to send a click.`);
  } catch (error) {
    say(error.message, true);
  }
}

function newEventId() {
  const random = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  return `web-${random}`;
}

async function waitUntilApplied(eventId, since) {
  while (performance.now() - since < APPLY_GIVE_UP_MS) {
    const profile = await api(`/v1/users/${encodeURIComponent(page.user)}/profile`);
    if (profile.sequence.some((entry) => entry.event_id === eventId)) return profile;
    await new Promise((resolve) => setTimeout(resolve, APPLY_POLL_MS));
  }
  return null;
}

function shownEvent(itemId, requestId, type = "impression") {
  const event = { event_id: newEventId(), user_id: page.user, item_id: itemId, type, ts: Date.now() };
  if (requestId) event.context = { request_id: requestId };
  return event;
}

async function publish(events) {
  if (!events.length) return;
  await api("/v1/events", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(events) });
}

async function clickItem(itemId, requestId) {
  const event = shownEvent(itemId, requestId, "click");
  const clickedAt = performance.now();
  try {
    say(`click on ${itemId} sent; waiting for the stream to apply it…`);
    await publish([event]);
    const profile = await waitUntilApplied(event.event_id, clickedAt);
    if (profile === null) {
      say(`the click was not applied within ${APPLY_GIVE_UP_MS / 1000} s: is the feature job running?`, true);
      return;
    }
    const appliedMs = performance.now() - clickedAt;
    renderSequence(profile);
    await loadRecommendations();
    const totalMs = performance.now() - clickedAt;
    $("click-latency").textContent = `${Math.round(totalMs)} ms (in Redis after ${Math.round(appliedMs)} ms)`;
    await loadSimilar(itemId, profile.sequence.find((entry) => entry.event_id === event.event_id)?.title);
    await loadExperiment();
    say(`click on ${itemId} applied; recommendations updated ${Math.round(totalMs)} ms after the click.`);
  } catch (error) {
    say(error.message, true);
  }
}

async function showSuggestions() {
  const { users } = await api("/v1/users?limit=12");
  $("user-suggestions").replaceChildren(
    ...users.map((user) => {
      const button = element("button", "", user);
      button.type = "button";
      button.addEventListener("click", () => showUser(user));
      return button;
    }),
  );
  return users;
}

function interval(bounds) {
  return bounds ? `${(100 * bounds[0]).toFixed(1)}–${(100 * bounds[1]).toFixed(1)} %` : "–";
}

async function loadExperiment() {
  const { experiment } = await api("/v1/experiments");
  $("experiment").hidden = !experiment;
  if (!experiment) return;
  $("experiment-name").textContent = experiment.name;
  $("experiment-arms").replaceChildren(
    ...experiment.arms.map((arm) => {
      const row = element("tr");
      row.dataset.arm = arm.name;
      const share = `${Math.round(100 * arm.share)} % of ${arm.shadow ? "requests (shadow)" : "users"}`;
      const cells = [arm.name, arm.version ? `v${arm.version}` : "live", share, arm.impressions, arm.clicks,
        arm.ctr == null ? "–" : `${(100 * arm.ctr).toFixed(1)} %`, interval(arm.ctr_interval),
        interval(arm.difference_interval), arm.shadow ? `${arm.would_have_shown} (${interval(arm.shown_interval)})` : "–"];
      row.append(...cells.map((cell) => element("td", "", String(cell))));
      return row;
    }),
  );
}

async function refresh() {
  try {
    await Promise.all([loadTrending(), loadExperiment()]);
    const { live_version: live } = await api("/v1/models");
    if (page.user && live !== page.modelVersion) await loadRecommendations();
    noticeModel(live);
  } catch (error) {
    say(error.message, true);
  }
}

async function start() {
  $("user-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const user = $("user-input").value.trim();
    if (user) showUser(user);
  });
  const users = await showSuggestions().catch((error) => (say(error.message, true), null));
  const user = new URLSearchParams(location.search).get("user_id") || users?.[0];
  if (user) await showUser(user);
  else if (users) say("no users with events yet: publish some events, or type a user id", true);
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
