// The operator console: the conversations with filters; one conversation's live state, transcript and
// lineage; taking it over from the bot and handing it back; charts of this API process's turns.
// Text from the API is only ever set as textContent, never as HTML: nothing it holds can inject markup.
import { Api, ApiError } from "../shared/api.js";
import { KEY_STORAGE, addSources, element, keyForm, safeUrl, temporalUrl } from "../shared/page.js";

const AGENT_STORAGE = "dialogue.agentName";
const PAGE_SIZE = 50;
const LIST_EVERY_MS = 5000;
const DETAIL_EVERY_MS = 2000;
const METRICS_EVERY_MS = 5000;
const WINDOW_MS = 5 * 60 * 1000; // the charts' span
const KEEP_SAMPLES = 61; // 60 intervals of 5 s
const TYPING_DEBOUNCE_MS = 400;
const TAKEOVER_REASON = "taken over from the console";
const NONE = "\u2014";

const $ = (id) => document.getElementById(id);
const ui = {
  whoami: $("whoami"),
  keyForm: $("key-form"),
  keyInput: $("api-key"),
  keyStatus: $("key-status"),
  filters: $("filters"),
  filterStatus: $("filter-status"),
  filterIntent: $("filter-intent"),
  filterDegraded: $("filter-degraded"),
  filterQ: $("filter-q"),
  listStatus: $("list-status"),
  rows: $("conversations").tBodies[0],
  pager: $("pager"),
  pagePrev: $("page-prev"),
  pageNext: $("page-next"),
  pageInfo: $("page-info"),
  detail: $("detail"),
  detailTitle: $("detail-title"),
  temporalLink: $("detail-temporal"),
  state: $("state"),
  transcript: $("transcript"),
  transcriptBox: $("transcript").parentElement,
  takeoverHint: $("takeover-hint"),
  agentName: $("agent-name"),
  takeOver: $("take-over"),
  handBack: $("hand-back"),
  agentForm: $("agent-form"),
  agentMessage: $("agent-message"),
  agentSend: $("agent-send"),
  detailStatus: $("detail-status"),
  chartsStatus: $("charts-status"),
};

// The key is kept in localStorage, like the chat page's; the page's Content-Security-Policy lets no
// other script run here to read it, and the shared Api class sends it in a header only.
const storedKey = () => localStorage.getItem(KEY_STORAGE) || "";
const api = new Api(storedKey);
let caller = null; // /v1/me: {tenant, scope, subject}
let keyNeeded = false; // no usable key: the API is not asked until one is saved

// --- small helpers -----------------------------------------------------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
function svgElement(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A moment in the browser's time zone and locale.
function timeElement(iso, { timeOnly = false, short = false } = {}) {
  const node = element("time");
  if (!iso) return Object.assign(node, { textContent: NONE });
  const date = new Date(iso);
  node.dateTime = iso;
  if (timeOnly) node.textContent = date.toLocaleTimeString();
  else if (short) node.textContent = date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  else node.textContent = date.toLocaleString();
  return node;
}

// Set a status line's text only when it changes: a live region repeats what it is given.
function setStatus(target, text, error = false) {
  if (target.textContent !== text) target.textContent = text;
  target.classList.toggle("error-text", error);
}

function errorText(error) {
  return error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
}

// A refused key (401) opens the key form; true when it did.
function refusedKey(error) {
  if (!(error instanceof ApiError) || error.status !== 401) return false;
  caller = null;
  ui.whoami.textContent = "Not signed in: the key was refused";
  askForKey("The key was refused: enter another.", { refused: true });
  return true;
}

function bulletList(lines, className) {
  const list = element("ul", className);
  for (const line of lines) list.append(element("li", null, line));
  return list;
}

// A task run now and then every `ms` while active; skipped while the page is hidden. A run asked for
// while one is under way runs once more after it, never beside it.
class Poller {
  constructor(ms, task) {
    Object.assign(this, { ms, task, active: false, timer: null, running: null, again: false });
  }

  start() {
    this.active = true;
    return this.run();
  }

  stop() {
    this.active = false;
    clearTimeout(this.timer);
  }

  async run() {
    clearTimeout(this.timer);
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        if (!document.hidden) await this.task().catch((error) => console.error(error));
      } while (this.again && this.active);
    })();
    try {
      await this.running;
    } finally {
      this.running = null;
    }
    if (this.active) this.timer = setTimeout(() => this.run(), this.ms);
  }
}

// --- the key -----------------------------------------------------------------------------------

const openKeyForm = keyForm(ui, () => {
  keyNeeded = false;
  caller = null;
  list.signature = null;
  ui.filterStatus.focus();
  start();
});

function askForKey(message = "", { refused = false } = {}) {
  if (refused || !storedKey()) keyNeeded = true; // polling waits for a key that works
  return openKeyForm(message);
}

$("change-key").addEventListener("click", () => askForKey());

async function loadCaller() {
  try {
    caller = await api.me();
    ui.whoami.textContent = `Signed in as ${caller.subject} (${caller.scope} scope, tenant ${caller.tenant})`;
  } catch (error) {
    if (!refusedKey(error)) ui.whoami.textContent = `Who this key is could not be read: ${errorText(error)}`;
  }
  updateControls();
  showTemporalLink();
  versionsPoller.start();
}

// --- the conversation list ---------------------------------------------------------------------

const list = { offset: 0, signature: null, seq: 0, debounce: null };

function filters() {
  return {
    status: ui.filterStatus.value,
    intent: ui.filterIntent.value.trim(),
    degraded: ui.filterDegraded.checked,
    q: ui.filterQ.value.trim(),
  };
}

async function loadList() {
  if (keyNeeded || !storedKey()) return;
  const seq = ++list.seq; // an answer to an older question (other filters, another page) is dropped
  let page;
  try {
    page = await api.conversations({ ...filters(), limit: PAGE_SIZE, offset: list.offset });
  } catch (error) {
    if (seq === list.seq && !refusedKey(error)) setStatus(ui.listStatus, errorText(error), true);
    return;
  }
  if (seq !== list.seq) return;
  if (!page.items.length && page.total > 0 && list.offset > 0) {
    // Paged past the end (conversations were erased meanwhile): the last page instead.
    list.offset = Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE;
    return loadList();
  }
  renderList(page);
}

function renderList(page) {
  const { items, total, offset } = page;
  const count = total === 1 ? "1 conversation" : `${total} conversations`;
  setStatus(ui.listStatus, total ? count : "No conversations match these filters.");
  const signature = JSON.stringify(page);
  if (signature === list.signature) return; // nothing changed: leave the rows, and focus, alone
  list.signature = signature;

  // Rebuilt rows must not steal keyboard focus: it returns to the same conversation's button.
  const focused = document.activeElement?.classList.contains("open")
    ? document.activeElement.dataset.conversationId
    : null;
  ui.rows.replaceChildren(...items.map(conversationRow));
  if (focused !== null) openButton(focused)?.focus();

  // A pager button disabled while it has focus would drop focus to the page: the other one takes it.
  const pagerFocus = [ui.pagePrev, ui.pageNext].includes(document.activeElement) ? document.activeElement : null;
  ui.pager.hidden = total <= PAGE_SIZE && offset === 0;
  ui.pagePrev.disabled = offset === 0;
  ui.pageNext.disabled = offset + items.length >= total;
  ui.pageInfo.textContent = items.length
    ? `Showing ${offset + 1}\u2013${offset + items.length} of ${total}`
    : `None of ${total} on this page`;
  if (pagerFocus?.disabled) (pagerFocus === ui.pagePrev ? ui.pageNext : ui.pagePrev).focus();
}

function conversationRow(item) {
  const row = element("tr");
  const head = element("th");
  head.scope = "row";
  const open = element("button", "open", item.conversation_id);
  open.type = "button";
  open.dataset.conversationId = item.conversation_id;
  if (item.conversation_id === detail.id) open.setAttribute("aria-current", "true");
  head.append(open);

  const status = element("td", `status-cell ${item.status === "active" ? "active" : "ended"}`, item.status);
  if (item.ended_reason) status.append(element("span", "reason", ` (${item.ended_reason})`));
  const degraded = element("td", "number");
  if (item.degraded_count > 0) degraded.append(element("span", "badge warn", String(item.degraded_count)));
  else degraded.textContent = "0";
  const updated = element("td");
  updated.append(timeElement(item.updated_at, { short: true }));
  row.append(
    head,
    status,
    element("td", null, item.tenant),
    element("td", null, item.last_intent || NONE),
    degraded,
    element("td", "number", String(item.turn_count)),
    updated,
  );
  return row;
}

function openButton(id) {
  return [...ui.rows.querySelectorAll("button.open")].find((button) => button.dataset.conversationId === id);
}

function markOpen() {
  for (const button of ui.rows.querySelectorAll("button.open")) {
    if (button.dataset.conversationId === detail.id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

ui.rows.addEventListener("click", (event) => {
  const button = event.target.closest("button.open");
  if (button) openConversation(button.dataset.conversationId);
});

function applyFilters() {
  clearTimeout(list.debounce);
  list.offset = 0;
  listPoller.run();
}

ui.filters.addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters();
});
ui.filterStatus.addEventListener("change", applyFilters);
ui.filterDegraded.addEventListener("change", applyFilters);
for (const input of [ui.filterIntent, ui.filterQ]) {
  input.addEventListener("input", () => {
    clearTimeout(list.debounce);
    list.debounce = setTimeout(applyFilters, TYPING_DEBOUNCE_MS);
  });
}

ui.pagePrev.addEventListener("click", () => {
  list.offset = Math.max(0, list.offset - PAGE_SIZE);
  listPoller.run();
});
ui.pageNext.addEventListener("click", () => {
  list.offset += PAGE_SIZE;
  listPoller.run();
});

// --- one conversation --------------------------------------------------------------------------

const detail = {
  id: null,
  state: null, // the live ConversationState; null while unknown
  stateSignature: null,
  keys: [], // `${turn_id}:${role}` of each transcript entry shown, in order
  signature: null, // the transcript's length and last entry when last shown
  lineage: new Map(), // turn_id -> the lineage answer, loaded once
  expanded: new Set(), // turn_ids whose lineage panel is open
  busy: false, // a takeover action is under way
};
let panels = 0; // numbers the lineage panels' ids

function openConversation(id, { focus = true } = {}) {
  if (detail.id !== id) {
    Object.assign(detail, { id, state: null, stateSignature: null, keys: [], signature: null });
    detail.lineage.clear();
    detail.expanded.clear();
    ui.state.replaceChildren();
    ui.transcript.replaceChildren();
    setStatus(ui.detailStatus, "");
    history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  }
  ui.detail.hidden = false;
  ui.detailTitle.textContent = `Conversation ${id}`;
  markOpen();
  showTemporalLink();
  updateControls();
  if (focus) ui.detailTitle.focus();
  detailPoller.start();
}

$("detail-close").addEventListener("click", () => {
  const id = detail.id;
  detailPoller.stop();
  detail.id = null;
  ui.detail.hidden = true;
  history.replaceState(null, "", location.pathname + location.search);
  markOpen();
  (openButton(id) || ui.filterStatus).focus();
});

async function showTemporalLink() {
  const link = ui.temporalLink;
  if (!detail.id || !caller) return void (link.hidden = true);
  try {
    link.href = await temporalUrl(caller.tenant, detail.id);
  } catch {
    return void (link.hidden = true);
  }
  link.hidden = false;
}

async function refreshDetail() {
  const id = detail.id;
  if (!id || keyNeeded || !storedKey()) return;
  await Promise.all([refreshState(id), refreshTranscript(id)]);
}

async function refreshState(id) {
  let state;
  try {
    state = await api.state(id);
  } catch (error) {
    if (id !== detail.id || refusedKey(error)) return;
    detail.state = null;
    detail.stateSignature = null;
    const missing = error instanceof ApiError && error.status === 404;
    ui.state.replaceChildren(
      stateEntry("State", missing ? "Not known: the conversation has no workflow (yet)." : errorText(error)),
    );
    updateControls();
    return;
  }
  if (id === detail.id) showState(state);
}

function stateEntry(term, value) {
  const group = element("div");
  const description = element("dd");
  if (value instanceof Node) description.append(value);
  else description.textContent = value === null || value === undefined || value === "" ? NONE : String(value);
  group.append(element("dt", null, term), description);
  return group;
}

const HOLDERS = { bot: "The bot", agent: "A person" };

function showState(state) {
  detail.state = state;
  const signature = JSON.stringify(state);
  if (signature !== detail.stateSignature) {
    detail.stateSignature = signature;
    const slots = Object.entries(state.slots || {});
    const flow = state.active_flow
      ? `${state.active_flow}${state.requested_slot ? ` (asking for ${state.requested_slot})` : ""}`
      : null;
    ui.state.replaceChildren(
      stateEntry("Status", state.ended_reason ? `${state.status} (${state.ended_reason})` : state.status),
      stateEntry("Held by", HOLDERS[state.held_by] || state.held_by),
      stateEntry("Agent", state.agent),
      stateEntry("Active flow", flow),
      stateEntry(
        "Slots",
        slots.length ? bulletList(slots.map(([name, value]) => `${name}: ${JSON.stringify(value)}`)) : null,
      ),
      stateEntry("Last intent", state.last_intent),
      stateEntry("Degraded answers", state.degraded_count),
      stateEntry("Turns", state.turn_count),
      stateEntry("Started", timeElement(state.started_at)),
      stateEntry("Updated", timeElement(state.updated_at)),
      stateEntry("Summary", state.summary),
      stateEntry("Rolling summary", rollingSummary(state.rolling_summary)),
      stateEntry("Waiting for the store", state.unrecorded || null),
      stateEntry("Waiting for approval", approvalList(state.pending_approvals)),
      stateEntry("Reminders", reminderList(state.reminders)),
      stateEntry("End user", state.user),
      ...(state.user ? [stateEntry("Their memory", userMemory(state.user))] : []),
    );
  }
  updateControls();
}

// Where an item of an end user's memory was learnt: said in a conversation's turn, or set over the API.
function memorySource(item) {
  const where = item.conversation_id ? ` in conversation ${item.conversation_id.split("/").pop()}` : "";
  const turn = item.turn_id ? `, turn ${item.turn_id}` : "";
  return `${item.kind}: from the ${item.source === "user" ? "user" : item.source}${where}${turn}`;
}

// What is remembered of the conversation's end user across their conversations, with where each item
// was learnt; filled in when it arrives.
function userMemory(user) {
  const holder = element("div", null, "\u2026");
  api
    .json(`/v1/users/${encodeURIComponent(user)}/memory`)
    .then((memory) => {
      const consent = { true: "consented", false: "refused", null: "not asked" }[String(memory.consent.consented)];
      const lines = memory.items.map((item) => {
        const where = item.conversation_id ? `said in ${item.conversation_id}${item.turn_id ? `, turn ${item.turn_id}` : ""}` : `set by ${item.source}`;
        return `${item.kind}: ${item.value} (${where})`;
      });
      holder.replaceChildren(element("p", "hint", `Memory ${consent}.`), ...(lines.length ? [bulletList(lines)] : []));
    })
    .catch((error) => holder.replaceChildren(element("p", "hint", errorText(error))));
  return holder;
}

// Tool calls the bot's agent waits to make. A person decides `agent` ones here (a key with the agent
// scope); `user` ones are the user's to decide, in the chat.
function approvalList(pending) {
  if (!pending || !pending.length) return null;
  const list = element("ul", "approvals");
  const mayDecide = !caller || caller.scope !== "client";
  for (const call of pending) {
    const item = element("li");
    item.dataset.callId = call.call_id;
    const args = Object.entries(call.arguments || {})
      .map(([name, value]) => `${name}: ${JSON.stringify(value)}`)
      .join(", ");
    const who = call.approval === "user" ? "the user decides, in the chat" : "a person decides";
    item.append(element("span", null, `${call.name} (${args}): ${who}, until `), timeElement(call.expires_at));
    if (call.approval === "agent" && mayDecide) {
      for (const [label, approve] of [
        ["Approve", true],
        ["Deny", false],
      ]) {
        const button = element("button", approve ? "approve" : "deny", label);
        button.type = "button";
        button.setAttribute("aria-label", `${label} ${call.name} (${call.call_id})`);
        button.addEventListener("click", () =>
          act(
            `${approve ? "Approving" : "Denying"} ${call.name}\u2026`,
            (id) => api.approve(id, call.call_id, approve, agentName() ? `decided by ${agentName()}` : null),
            approve ? "Approved: the bot goes on and makes the call." : "Denied: the bot goes on without it.",
          ),
        );
        item.append(button);
      }
    }
    list.append(item);
  }
  return list;
}

// Messages the bot will send on its own, soonest first: each with when, who scheduled it, and a way to
// cancel it (a server-side key's, as the API allows).
function reminderList(reminders) {
  if (!reminders || !reminders.length) return null;
  const list = element("ul", "reminders");
  for (const reminder of reminders) {
    const item = element("li");
    if (reminder.on_event) {
      // Said when the integrator reports the event (POST /v1/events); dropped if it has not by due_at.
      item.append(
        element("span", null, `\u201c${reminder.text}\u201d when ${reminder.on_event} is reported, until `),
        timeElement(reminder.due_at),
      );
    } else {
      item.append(element("span", null, `\u201c${reminder.text}\u201d at `), timeElement(reminder.due_at));
    }
    item.append(element("span", "hint", ` (by ${reminder.by})`));
    if (!caller || !caller.user) {
      const button = element("button", "deny", "Cancel");
      button.type = "button";
      button.setAttribute("aria-label", `Cancel the reminder \u201c${reminder.text}\u201d`);
      button.addEventListener("click", () =>
        act("Cancelling the reminder\u2026", (id) => api.cancelReminder(id, reminder.id), "Cancelled: it will not be sent."),
      );
      item.append(button);
    }
    list.append(item);
  }
  return list;
}

function rollingSummary(summary) {
  if (!summary) return null;
  const by = summary.prompt_id ? `${summary.generator}, ${summary.prompt_id}` : summary.generator;
  return `v${summary.version}, turns before ${summary.through} (${by}): ${summary.text}`;
}

// --- the transcript ----------------------------------------------------------------------------

const SPEAKERS = { user: "User", bot: "Bot", agent: "Agent", system: "Notice" };
const keyOf = (message) => `${message.turn_id}:${message.role}`;

async function refreshTranscript(id) {
  let items;
  try {
    items = await api.messages(id);
  } catch (error) {
    if (id !== detail.id || refusedKey(error)) return;
    if (error instanceof ApiError && error.code === "conversation_not_found" && !detail.keys.length) {
      return transcriptNote(NO_MESSAGES);
    }
    return transcriptNote(`The transcript could not be read: ${errorText(error)}`, true);
  }
  if (id !== detail.id) return;
  transcriptNote(items.length ? "" : NO_MESSAGES);
  const keys = items.map(keyOf);
  for (const answer of items.filter((message) => message.role === "bot")) {
    const shown = [...ui.transcript.children].find((li) => li.dataset.turnId === answer.turn_id && li.classList.contains("bot"));
    showRating(shown, answer.rating);
  }
  const signature = `${items.length}|${keys[keys.length - 1] || ""}`;
  if (signature === detail.signature) return; // unchanged: an open lineage panel and focus stay put
  const first = detail.signature === null;
  detail.signature = signature;

  const box = ui.transcriptBox;
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const extended = detail.keys.length <= keys.length && detail.keys.every((key, i) => key === keys[i]);
  if (extended) {
    const added = items.slice(detail.keys.length).map(messageItem).filter(Boolean);
    ui.transcript.append(...added);
  } else {
    // The window of the newest messages moved: rebuild, and give focus back to the same place.
    const active = document.activeElement;
    const focusedTurn = ui.transcript.contains(active) ? active.closest("li")?.dataset.turnId : null;
    const focusedClass = focusedTurn ? active.className : null;
    ui.transcript.replaceChildren(...items.map(messageItem).filter(Boolean));
    if (focusedTurn) {
      const again = [...ui.transcript.children].find((li) => li.dataset.turnId === focusedTurn);
      (again?.getElementsByClassName(focusedClass.split(" ")[0])[0] || ui.transcriptBox).focus();
    }
  }
  detail.keys = keys;
  if (first || atEnd) box.scrollTop = box.scrollHeight;
}

// What reading the transcript has to say goes to the detail's status line, and leaves it again once
// it no longer holds (a takeover's result shown meanwhile stays).
const NO_MESSAGES = "This conversation has no messages yet.";
let lastNote = "";
function transcriptNote(text, error = false) {
  if (text) setStatus(ui.detailStatus, text, error);
  else if (lastNote && ui.detailStatus.textContent === lastNote) setStatus(ui.detailStatus, "");
  lastNote = text;
}

// The user's rating of an answer, kept up to date: a rating may come after the answer is shown.
function showRating(item, rating) {
  if (!item) return;
  let note = item.querySelector(".rating");
  if (!rating) return void note?.remove();
  const text = `The user rated this answer ${rating === "up" ? "helpful" : "not helpful"}.`;
  if (!note) {
    note = element("p", "rating");
    item.insertBefore(note, item.querySelector(".lineage-toggle"));
  }
  if (note.textContent !== text) note.textContent = text;
}

function messageItem(message) {
  if (message.role === "bot" && !message.text) return null; // a turn a person answered, not the bot
  const item = element("li", `message ${SPEAKERS[message.role] ? message.role : "system"}`);
  item.dataset.turnId = message.turn_id;

  const meta = element("p", "meta");
  const who = message.role === "agent" && message.author ? `Agent (${message.author})` : SPEAKERS[message.role] || message.role;
  meta.append(element("span", "speaker", who), " ", timeElement(message.created_at, { timeOnly: true }));
  if (message.role === "bot" && message.intent) {
    const confidence = typeof message.confidence === "number" ? ` ${message.confidence.toFixed(2)}` : "";
    meta.append(" ", element("span", "intent", `intent ${message.intent}${confidence}`));
  }
  item.append(meta, element("p", "text", message.text));

  if (message.degraded) {
    item.append(element("p", "notice degraded", "Degraded: a step failed or the deadline passed; this was a fallback reply."));
  }
  addSources(item, message.sources);
  showRating(item, message.rating);
  if (message.role === "bot") addLineage(item, message);
  return item;
}

// --- lineage -----------------------------------------------------------------------------------

function addLineage(item, message) {
  const panel = element("div", "lineage");
  panel.id = `lineage-${++panels}`;
  panel.hidden = true;
  const button = element("button", "lineage-toggle", "Lineage");
  button.type = "button";
  button.append(element("span", "visually-hidden", ` of answer ${message.turn_index + 1}`));
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-controls", panel.id);
  button.addEventListener("click", () =>
    showLineage(button, panel, message.turn_id, button.getAttribute("aria-expanded") !== "true"),
  );
  item.append(button, panel);
  if (detail.expanded.has(message.turn_id)) showLineage(button, panel, message.turn_id, true);
}

async function showLineage(button, panel, turnId, open) {
  button.setAttribute("aria-expanded", String(open));
  panel.hidden = !open;
  if (!open) return void detail.expanded.delete(turnId);
  detail.expanded.add(turnId);
  if (panel.childElementCount && !panel.querySelector(".notice.error")) return; // shown already
  const id = detail.id;
  let answer = detail.lineage.get(turnId);
  if (!answer) {
    panel.setAttribute("aria-busy", "true");
    panel.replaceChildren(element("p", "hint", "Loading the lineage\u2026"));
    try {
      answer = await api.lineage(id, turnId);
    } catch (error) {
      panel.removeAttribute("aria-busy");
      if (!refusedKey(error)) panel.replaceChildren(element("p", "notice error", errorText(error)));
      return;
    }
    if (id === detail.id) detail.lineage.set(turnId, answer);
  }
  panel.removeAttribute("aria-busy");
  panel.replaceChildren(lineageView(answer));
}

const KNOWN_LINEAGE = new Set([
  "nlu", "nlu_model", "generator", "prompt_id", "prompt_hash", "documents", "timings_ms", "degraded_reason", "flags",
  "context", "retrieval_query", "data", "agent", "agent_answer", "memory",
]);
const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : String(value ?? NONE));

function lineageView(answer) {
  const lineage = answer.lineage;
  if (!lineage) return element("p", "hint", "No lineage was recorded for this answer.");
  const view = element("dl", "lineage-list");
  const add = (term, value) => {
    if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
    const description = element("dd");
    if (Array.isArray(value)) description.append(bulletList(value));
    else description.textContent = String(value);
    view.append(element("dt", null, term), description);
  };
  const nlu = lineage.nlu || {};
  add("Intent", nlu.intent ? `${nlu.intent.name} (confidence ${fixed(nlu.intent.confidence, 2)})` : null);
  add(
    "Other candidates",
    (nlu.ranking || []).slice(1).map((candidate) => `${candidate.name} (${fixed(candidate.confidence, 4)})`),
  );
  add("Entities", (nlu.entities || []).map((entity) => `${entity.entity} = ${entity.value}`));
  add("Sentiment", nlu.sentiment ? `${nlu.sentiment.label} (${fixed(nlu.sentiment.score, 2)})` : null);
  add("Action", nlu.action);
  add("NLU model", lineage.nlu_model || nlu.model);
  add("Generator", lineage.generator);
  if (lineage.prompt_id || lineage.prompt_hash) {
    const hash = lineage.prompt_hash ? ` (hash ${String(lineage.prompt_hash).slice(0, 12)})` : "";
    add("Prompt", `${lineage.prompt_id || "unnamed"}${hash}`);
  }
  add(
    "Documents used",
    (lineage.documents || []).map((doc) =>
      [
        doc.document_id,
        doc.version !== null && doc.version !== undefined ? `version ${doc.version}` : null,
        doc.chunk_id ? `passage ${doc.chunk_id}` : null,
        typeof doc.score === "number" ? `score ${doc.score.toFixed(4)}` : null,
      ]
        .filter(Boolean)
        .join(", "),
    ),
  );
  add("Searched with", lineage.retrieval_query);
  add("Memory used", (lineage.memory || []).map(memorySource));
  add("Conversation sent", contextLines(lineage.context));
  add("Structured reply", lineage.data ? JSON.stringify(lineage.data) : null);
  add("Agent's tool calls", agentLines(lineage.agent || []));
  add("Agent's answer", lineage.agent_answer ? modelCallLine(lineage.agent_answer) : null);
  add("Steps", Object.entries(lineage.timings_ms || {}).map(([step, ms]) => `${step}: ${formatMs(ms)}`));
  const reason = lineage.degraded_reason ? `${lineage.degraded_reason} failed` : "the reason was not recorded";
  add("Degraded", answer.degraded ? `yes: ${reason}; the user got a fallback reply` : "no");
  add("Feature flags", Object.entries(lineage.flags || {}).map(([flag, on]) => `${flag}: ${on ? "on" : "off"}`));
  if (answer.feedback) {
    const comment = answer.feedback.comment ? `: \u201c${answer.feedback.comment}\u201d` : "";
    add("Rating", `${answer.feedback.rating === "up" ? "helpful" : "not helpful"}${comment}`);
  }
  for (const [name, value] of Object.entries(lineage)) {
    if (!KNOWN_LINEAGE.has(name)) add(name, typeof value === "string" ? value : JSON.stringify(value));
  }
  return view;
}

// An agent's steps: each model call, then each tool call it asked for and what came of it.
function agentLines(steps) {
  const lines = [];
  steps.forEach((step, n) => {
    if (step.model_call) lines.push(`step ${n + 1}: ${modelCallLine(step.model_call)}`);
    const outcomes = new Map((step.outcomes || []).map((outcome) => [outcome.call_id, outcome]));
    for (const call of step.calls || []) {
      const outcome = outcomes.get(call.call_id);
      const args = JSON.stringify(call.arguments || {});
      let what = "waiting for approval";
      if (outcome) {
        what = outcome.ok ? `ok, ${outcome.size} bytes${outcome.stored ? " (whole result stored)" : ""}` : `failed: ${outcome.error}`;
        what += `, attempt ${outcome.attempt}, ${formatMs(outcome.duration_ms)}`;
        if (outcome.approval) {
          const decided = outcome.approval.approved ? "approved" : "denied";
          what += `; ${decided} by ${outcome.approval.role === "timeout" ? "timeout" : outcome.approval.by}`;
        }
      }
      lines.push(`  ${call.name} ${args} (${call.call_id}): ${what}`);
    }
  });
  return lines;
}

function modelCallLine(call) {
  const tokens = call.prompt_tokens !== null && call.prompt_tokens !== undefined
    ? `, ${call.prompt_tokens} + ${call.completion_tokens} tokens`
    : "";
  return `${call.model} ${call.prompt_id || ""}${tokens}, ${formatMs(call.duration_ms)}, attempt ${call.attempt}`;
}

// What an LLM answer saw of the conversation (ContextLineage).
function contextLines(context) {
  if (!context) return null;
  const places = (list) => (list.length ? list.join(", ") : "none");
  const tokens = [
    `${context.context_tokens} of ${context.budget} tokens (${context.tokenizer})`,
    context.prompt_tokens !== null ? `prompt ${context.prompt_tokens}` : null,
    context.completion_tokens !== null ? `completion ${context.completion_tokens}` : null,
  ];
  return [
    `turns verbatim: ${places(context.turns)}`,
    context.summary_version !== null
      ? `summary v${context.summary_version} (turns before ${context.summary_through})`
      : "no summary",
    context.dropped.length ? `left out (over the budget): ${places(context.dropped)}` : null,
    context.missing.length ? `not in the transcript yet: ${places(context.missing)}` : null,
    tokens.filter(Boolean).join(", "),
    context.truncated ? "the message was cut to the budget" : null,
    ...context.notes,
    `messages sha256 ${String(context.messages_sha256).slice(0, 16)}\u2026`,
  ].filter(Boolean);
}

// --- taking over -------------------------------------------------------------------------------

const agentName = () => ui.agentName.value.trim() || null;

ui.agentName.value = localStorage.getItem(AGENT_STORAGE) || "";
ui.agentName.addEventListener("input", () => {
  const name = ui.agentName.value.trim();
  if (name) localStorage.setItem(AGENT_STORAGE, name);
  else localStorage.removeItem(AGENT_STORAGE);
});

// Which controls apply: take over while the bot holds an active conversation; write and hand back
// while a person holds it. A key with the client scope may do neither (the API answers 403).
function updateControls() {
  const state = detail.state;
  const allowed = !caller || caller.scope !== "client";
  const active = Boolean(allowed && state && state.status === "active");
  const held = active && state.held_by === "agent";
  const focused = document.activeElement;

  ui.takeOver.disabled = !(active && state.held_by === "bot");
  ui.handBack.disabled = !held;
  ui.agentMessage.disabled = !held;
  ui.agentSend.disabled = !held;

  let hint;
  if (!allowed) {
    hint = `This key has the ${caller.scope} scope: taking a conversation over, writing to its user and handing it back need a key with the agent or admin scope.`;
  } else if (!state) {
    hint = "The conversation's live state is not known yet: it cannot be taken over now.";
  } else if (state.status !== "active") {
    hint = "The conversation has ended: it cannot be taken over.";
  } else if (held) {
    hint = `${state.agent || "A person"} holds this conversation: the bot does not answer its user. Hand it back when done.`;
  } else {
    hint = "The bot answers this conversation. Take it over to answer the user yourself.";
  }
  if (ui.takeoverHint.textContent !== hint) ui.takeoverHint.textContent = hint;

  // A control disabled while focused drops focus to the page: its counterpart takes it instead.
  if (focused && focused.disabled && ui.detail.contains(focused)) {
    const next = [ui.agentMessage, ui.takeOver, ui.handBack].find((control) => !control.disabled);
    (next || ui.detailTitle).focus();
  }
}

async function act(pending, action, done) {
  if (detail.busy || !detail.id) return;
  detail.busy = true;
  const id = detail.id;
  setStatus(ui.detailStatus, pending);
  let ok = false;
  try {
    const result = await action(id);
    if (id === detail.id) {
      if (result && result.held_by) showState(result);
      setStatus(ui.detailStatus, done);
      ok = true;
    }
  } catch (error) {
    if (id === detail.id && !refusedKey(error)) setStatus(ui.detailStatus, errorText(error), true);
  } finally {
    detail.busy = false;
  }
  if (id === detail.id) detailPoller.run(); // the state and transcript at once, not in 2 s
  return ok;
}

ui.takeOver.addEventListener("click", async () => {
  const ok = await act(
    "Taking the conversation over\u2026",
    (id) => api.handoff(id, { agent: agentName(), reason: TAKEOVER_REASON }),
    "You hold the conversation now: the bot stops answering, and your messages go to the user.",
  );
  if (ok && !ui.agentMessage.disabled) ui.agentMessage.focus();
});

ui.handBack.addEventListener("click", async () => {
  const ok = await act(
    "Handing the conversation back\u2026",
    (id) => api.handback(id, agentName()),
    "Handed back: the bot answers the user again.",
  );
  if (ok && !ui.takeOver.disabled) ui.takeOver.focus();
});

ui.agentForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.agentMessage.value.trim();
  if (!text || ui.agentMessage.disabled) return;
  // The text stays in the box until the API took it: a refused message is not lost.
  const ok = await act("Sending\u2026", (id) => api.agentMessage(id, text, agentName()), "Sent to the user.");
  if (ok && ui.agentMessage.value.trim() === text) ui.agentMessage.value = "";
  if (!ui.agentMessage.disabled) ui.agentMessage.focus();
});

ui.agentMessage.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; not while an input method is composing a character.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.agentForm.requestSubmit();
  }
});

// --- charts ------------------------------------------------------------------------------------

const COUNTED = ["ok", "degraded"]; // turns answered; rejected and failed ones have no answer to time
const samples = []; // {at, outcomes, ok, degraded, turns, buckets: Map(le -> count), bucketList}

// Prometheus text format: `name{label="value",...} value [timestamp]`; `#` lines are comments.
function parseMetrics(text) {
  const series = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] || "").matchAll(/([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    series.push({ name: match[1], labels, value: promNumber(match[3]) });
  }
  return series;
}

function promNumber(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

function sampleOf(series, at) {
  const outcomes = {};
  const buckets = new Map();
  for (const { name, labels, value } of series) {
    if (name === "dialogue_turns_total") {
      outcomes[labels.outcome] = (outcomes[labels.outcome] || 0) + value;
    } else if (name === "dialogue_turn_duration_seconds_bucket" && COUNTED.includes(labels.outcome)) {
      const le = promNumber(labels.le);
      buckets.set(le, (buckets.get(le) || 0) + value);
    }
  }
  const ok = outcomes.ok || 0;
  const degraded = outcomes.degraded || 0;
  const bucketList = [...buckets].sort((a, b) => a[0] - b[0]);
  return { at, outcomes, ok, degraded, turns: ok + degraded, buckets, bucketList };
}

// The q-quantile of cumulative buckets [[le, count], ...] (le ascending, +Inf last), interpolated
// linearly within its bucket as Prometheus' histogram_quantile does; null without observations.
function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lower; // beyond the last bound: the last bound, as Prometheus answers
      if (count === below) return le;
      return lower + (le - lower) * ((rank - below) / (count - below));
    }
    lower = le;
    below = count;
  }
  return lower;
}

const QUANTILES = [
  ["p50", 0.5],
  ["p95", 0.95],
  ["p99", 0.99],
];

function latencies(buckets) {
  return Object.fromEntries(QUANTILES.map(([name, q]) => [name, scaled(quantile(q, buckets), 1000)]));
}

const scaled = (value, factor) => (value === null ? null : value * factor);

// One point per interval between two samples.
function points() {
  const result = [];
  for (let i = 1; i < samples.length; i += 1) {
    const before = samples[i - 1];
    const after = samples[i];
    const seconds = (after.at - before.at) / 1000;
    const turns = after.turns - before.turns;
    const buckets = after.bucketList.map(([le, count]) => [le, count - (before.buckets.get(le) || 0)]);
    result.push({
      at: after.at,
      seconds,
      turns,
      perMinute: seconds > 0 ? (turns / seconds) * 60 : null,
      ...latencies(buckets),
      degradedRate: turns > 0 ? ((after.degraded - before.degraded) / turns) * 100 : null,
    });
  }
  return result;
}

async function sampleMetrics() {
  let text;
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`the server answered ${response.status} ${response.statusText}`);
    text = await response.text();
  } catch (error) {
    return setStatus(ui.chartsStatus, `The metrics could not be read: ${error.message}.`, true);
  }
  setStatus(ui.chartsStatus, "");
  const sample = sampleOf(parseMetrics(text), Date.now());
  const last = samples[samples.length - 1];
  // Counters that went back: the API restarted, and the earlier samples count another process.
  const restarted =
    last &&
    (sample.turns < last.turns || sample.bucketList.some(([le, count]) => count < (last.buckets.get(le) || 0)));
  if (restarted) samples.length = 0;
  samples.push(sample);
  while (samples.length > KEEP_SAMPLES || (samples.length > 1 && sample.at - samples[0].at > WINDOW_MS + METRICS_EVERY_MS)) {
    samples.shift();
  }
  drawCharts(sample);
}

function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return NONE;
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}
const formatRate = (value) => (value === null ? NONE : value.toFixed(1));
const formatPercent = (value) => (value === null ? NONE : `${value.toFixed(1)} %`);

function drawCharts(sample) {
  const series = points();
  const total = latencies(sample.bucketList);
  const degradedTotal = sample.turns ? (sample.degraded / sample.turns) * 100 : null;

  $("total-turns").textContent = String(sample.turns);
  $("total-p50").textContent = formatMs(total.p50);
  $("total-p95").textContent = formatMs(total.p95);
  $("total-p99").textContent = formatMs(total.p99);
  $("total-degraded").textContent = degradedTotal === null ? NONE : `${formatPercent(degradedTotal)} (${sample.degraded})`;
  $("total-errors").textContent = `${sample.outcomes.rejected || 0} / ${sample.outcomes.failed || 0}`;

  const latest = series[series.length - 1];
  const span = latest ? `the last ${Math.round(latest.seconds)} s` : null;
  const highest = (key) => {
    const values = series.map((point) => point[key]).filter((value) => value !== null);
    return values.length ? Math.max(...values) : null;
  };

  let turnsText = "Turns per minute: waiting for a second sample.";
  if (latest) {
    turnsText = `Turns per minute: ${formatRate(latest.perMinute)} over ${span}; highest ${formatRate(highest("perMinute"))} in the last 5 minutes.`;
  }
  drawChart($("chart-turns"), {
    summary: turnsText,
    lines: [{ key: "perMinute", name: "Turns per minute", className: "line-a" }],
    format: formatRate,
    floor: 1,
    series,
  });

  const since = `Since the API started: p50 ${formatMs(total.p50)}, p95 ${formatMs(total.p95)}, p99 ${formatMs(total.p99)}.`;
  let latencyText = `Turn latency: waiting for a second sample. ${since}`;
  if (latest) {
    latencyText =
      latest.p50 === null
        ? `Turn latency: no turns in ${span}. ${since}`
        : `Turn latency over ${span}: p50 ${formatMs(latest.p50)}, p95 ${formatMs(latest.p95)}, p99 ${formatMs(latest.p99)}. ${since}`;
  }
  drawChart($("chart-latency"), {
    summary: latencyText,
    lines: [
      { key: "p50", name: "p50", className: "line-a" },
      { key: "p95", name: "p95", className: "line-b" },
      { key: "p99", name: "p99", className: "line-c" },
    ],
    format: formatMs,
    floor: 10,
    series,
  });

  const sinceDegraded = `Since the API started: ${degradedTotal === null ? "no turns yet" : formatPercent(degradedTotal)}.`;
  let degradedText = `Degraded rate: waiting for a second sample. ${sinceDegraded}`;
  if (latest) {
    degradedText =
      latest.degradedRate === null
        ? `Degraded rate: no turns in ${span}. ${sinceDegraded}`
        : `Degraded rate: ${formatPercent(latest.degradedRate)} of the turns over ${span}. ${sinceDegraded}`;
  }
  drawChart($("chart-degraded"), {
    summary: degradedText,
    lines: [{ key: "degradedRate", name: "Degraded rate", className: "line-c" }],
    format: formatPercent,
    floor: 5,
    ceiling: 100,
    series,
  });
}

// A round upper bound for the y axis: 1, 2 or 5 times a power of ten.
function niceMax(value, floor, ceiling = Infinity) {
  const target = Math.max(value, floor);
  const power = 10 ** Math.floor(Math.log10(target));
  const nice = [1, 2, 5, 10].map((step) => step * power).find((step) => step >= target);
  return Math.min(nice, ceiling);
}

const BOX = { width: 360, height: 170, left: 58, right: 10, top: 12, bottom: 26 };

// A line chart as inline SVG: geometry in attributes (the page's CSP allows no inline styles).
function drawChart(figure, { summary, lines, format, floor, ceiling, series }) {
  const { width, height, left, right, top, bottom } = BOX;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const end = series.length ? series[series.length - 1].at : Date.now();
  const start = end - WINDOW_MS;
  const values = series.flatMap((point) => lines.map((line) => point[line.key])).filter((v) => v !== null);
  const max = niceMax(values.length ? Math.max(...values) : 0, floor, ceiling);
  const x = (at) => (left + ((at - start) / WINDOW_MS) * plotWidth).toFixed(1);
  const y = (value) => (top + plotHeight - (Math.min(value, max) / max) * plotHeight).toFixed(1);

  const chart = svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": summary,
    class: "plot",
    preserveAspectRatio: "xMidYMid meet",
  });
  chart.append(svgElement("title", {}, summary));
  // The axes, a line at the top of the range, and their labels: the range's ends.
  chart.append(
    svgElement("line", { class: "grid", x1: left, y1: top, x2: width - right, y2: top }),
    svgElement("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotHeight }),
    svgElement("line", { class: "axis", x1: left, y1: top + plotHeight, x2: width - right, y2: top + plotHeight }),
    svgElement("text", { class: "tick", x: left - 6, y: top + 4, "text-anchor": "end" }, format(max)),
    svgElement("text", { class: "tick", x: left - 6, y: top + plotHeight + 4, "text-anchor": "end" }, format(0)),
    svgElement("text", { class: "tick", x: left, y: height - 6, "text-anchor": "start" }, new Date(start).toLocaleTimeString()),
    svgElement("text", { class: "tick", x: width - right, y: height - 6, "text-anchor": "end" }, new Date(end).toLocaleTimeString()),
  );
  for (const line of lines) {
    // A gap (no turns to time) breaks the line; a lone point is drawn as a dot.
    let run = [];
    const flush = () => {
      if (run.length === 1) {
        chart.append(svgElement("circle", { class: `dot ${line.className}`, cx: run[0][0], cy: run[0][1], r: 2.5 }));
      } else if (run.length > 1) {
        chart.append(svgElement("polyline", { class: `series ${line.className}`, points: run.map((p) => p.join(",")).join(" ") }));
      }
      run = [];
    };
    for (const point of series) {
      if (point[line.key] === null || point.at < start) flush();
      else run.push([x(point.at), y(point[line.key])]);
    }
    flush();
  }

  const old = figure.querySelector("svg");
  if (old) old.replaceWith(chart);
  else figure.prepend(chart);
  if (lines.length > 1 && !figure.querySelector(".legend")) {
    const legend = element("ul", "legend");
    legend.setAttribute("aria-hidden", "true"); // the caption says the same in words
    for (const line of lines) {
      const entry = element("li");
      entry.append(element("span", `swatch ${line.className}`), line.name);
      legend.append(entry);
    }
    chart.after(legend);
  }
  const caption = figure.querySelector("figcaption");
  if (caption.textContent !== summary) caption.textContent = summary;
}

// --- bot versions ------------------------------------------------------------------------------

const VERSIONS_EVERY_MS = 15000;
const VERSION_COLUMNS = [
  ["Turns", (n) => String(n.turns)],
  ["Degraded", (n) => percent(n.degraded_rate)],
  ["Fallback", (n) => percent(n.fallback_rate)],
  ["Out of scope", (n) => percent(n.out_of_scope_rate)],
  ["Handoff", (n) => percent(n.handoff_rate)],
  ["Rated down", (n) => `${percent(n.rated_down_rate)} (${n.ratings} rated)`],
  ["Satisfaction", (n) => (n.satisfaction_mean === null ? NONE : `${n.satisfaction_mean.toFixed(2)} (${n.satisfaction_count})`)],
  ["Latency p50", (n) => milliseconds(n.p50_ms)],
  ["Latency p99", (n) => milliseconds(n.p99_ms)],
];
const percent = (share) => `${(share * 100).toFixed(1)}%`;
const milliseconds = (ms) => (ms === null ? NONE : `${Math.round(ms)} ms`);

// Each bot with a release: its stable and its canary, one row each. Admin keys only: for another key the
// section stays hidden.
async function loadVersions() {
  const section = $("versions");
  if (!caller || caller.scope !== "admin") return void (section.hidden = true);
  let tables;
  try {
    const bots = (await api.bots()).filter((bot) => bot.release);
    tables = await Promise.all(bots.map(async (bot) => versionsTable(await api.botNumbers(bot.bot))));
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return void (section.hidden = true);
    return setStatus($("versions-status"), `The numbers could not be read: ${errorText(error)}`, true);
  }
  section.hidden = false;
  setStatus($("versions-status"), tables.length ? "" : "No bot has a release yet (dialogue bot release).");
  $("versions-tables").replaceChildren(...tables);
}

function versionsTable(numbers) {
  const table = element("table", "conversations versions-table");
  const since = numbers.since ? ` since ${new Date(numbers.since).toLocaleString()}` : "";
  const share = numbers.release.canary ? `, canary at ${numbers.release.canary_percent}%` : "";
  table.append(element("caption", null, `${numbers.bot}${share}${since}`));
  const head = element("tr");
  for (const name of ["Version", ...VERSION_COLUMNS.map(([title]) => title)]) {
    const cell = element("th", null, name);
    cell.scope = "col";
    head.append(cell);
  }
  table.append(element("thead"));
  table.tHead.append(head);
  const body = element("tbody");
  for (const [role, side] of [["stable", numbers.stable], ["canary", numbers.canary]]) {
    if (!side) continue;
    const row = element("tr");
    const name = element("th", null, `${role} ${side.version}`);
    name.scope = "row";
    row.append(name, ...VERSION_COLUMNS.map(([, value]) => element("td", "number", value(side))));
    body.append(row);
  }
  table.append(body);
  const wrap = element("div", "table-wrap");
  wrap.append(table);
  return wrap;
}

// --- start -------------------------------------------------------------------------------------

const listPoller = new Poller(LIST_EVERY_MS, loadList);
const detailPoller = new Poller(DETAIL_EVERY_MS, refreshDetail);
const metricsPoller = new Poller(METRICS_EVERY_MS, sampleMetrics);
const versionsPoller = new Poller(VERSIONS_EVERY_MS, loadVersions);

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  for (const poller of [listPoller, detailPoller, metricsPoller, versionsPoller]) if (poller.active) poller.run();
});

function wantedConversation() {
  try {
    return decodeURIComponent(location.hash.slice(1)) || null;
  } catch {
    return null;
  }
}

function start() {
  loadCaller();
  listPoller.start();
  const wanted = wantedConversation();
  if (detail.id) detailPoller.start();
  else if (wanted) openConversation(wanted, { focus: false });
}

metricsPoller.start();
if (storedKey()) start();
else askForKey();
