// The chat page: the key form, the transcript, the composer, ratings and the debug panel.
// Text from the API is only ever set as textContent, never as HTML: a reply cannot inject markup.
import { Api, ApiError, newId } from "../shared/api.js";
import { KEY_STORAGE, addSources, element, keyForm, temporalUrl } from "../shared/page.js";

const CONVERSATION_STORAGE = "dialogue.conversationId";
const CUSTOMER_STORAGE = "dialogue.customer";

const $ = (id) => document.getElementById(id);
const ui = {
  keyForm: $("key-form"),
  keyInput: $("api-key"),
  keyStatus: $("key-status"),
  messages: $("messages"),
  status: $("status"),
  composer: $("composer"),
  text: $("message"),
  debugToggle: $("debug-toggle"),
  debug: $("debug"),
  customerForm: $("customer-form"),
  customerId: $("customer-id"),
  remember: $("remember-me"),
  customerStatus: $("customer-status"),
  remembered: $("remembered"),
};

// The key is kept in localStorage so that it is asked for once; the page's Content-Security-Policy
// lets no other script run here to read it.
// The key is the integrator's server's; a signed-in customer talks with an end-user token minted with it
// (what the integrator's own server would do), and then reaches only their own conversations and memory.
const server = new Api(() => localStorage.getItem(KEY_STORAGE) || "");
let customer = localStorage.getItem(CUSTOMER_STORAGE);
let customerToken = null;
const api = new Api(() => customerToken || localStorage.getItem(KEY_STORAGE) || "");
let conversationId = localStorage.getItem(CONVERSATION_STORAGE);
let lastAnswer = null; // {turnId, nlu, timings} of the newest answer, for the debug panel
let caller = null; // /v1/me: the key's tenant, for the Temporal Web UI link

// --- the key -----------------------------------------------------------------------------------

const askForKey = keyForm(ui, () => {
  caller = null;
  ui.text.focus();
  loadHistory();
});

$("change-key").addEventListener("click", () => askForKey());

// --- the transcript ----------------------------------------------------------------------------

const SPEAKERS = { user: "You", bot: "Bot", agent: "Agent", system: "Notice" };

function addMessage(role, text, author) {
  const item = element("li", `message ${role}`);
  const who = author && role === "agent" ? `${SPEAKERS.agent} (${author})` : SPEAKERS[role] || role;
  // Bubbles show who speaks by their place and colour; screen readers hear it said.
  const quiet = role === "user" || role === "bot" ? " visually-hidden" : "";
  item.append(element("span", `speaker${quiet}`, `${who}: `), element("p", "text", text));
  ui.messages.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function addNotice(item, className, text) {
  item.append(element("p", `notice ${className}`, text));
}

function showError(error, item) {
  if (error instanceof ApiError && error.status === 401) askForKey("The key was refused: enter another.");
  const text = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
  const hint = error instanceof ApiError && error.code === "conversation_ended" ? ": start a new conversation" : "";
  const target = item || addMessage("system", "");
  target.setAttribute("role", "alert");
  addNotice(target, "error", text + hint);
}

function addFeedback(item, turnId, rated = null) {
  const group = element("div", "feedback");
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", "Rate this answer");
  const buttons = [
    ["up", "Helpful", "\u{1F44D}"],
    ["down", "Not helpful", "\u{1F44E}"],
  ].map(([rating, label, symbol]) => {
    const button = element("button", "rate", symbol);
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.setAttribute("aria-pressed", String(rating === rated));
    button.addEventListener("click", async () => {
      try {
        await api.rate(conversationId, turnId, rating);
        // The store keeps one rating per answer: the newest replaces the other.
        for (const other of buttons) other.setAttribute("aria-pressed", String(other === button));
      } catch (error) {
        showError(error, item);
      }
    });
    return button;
  });
  group.append(...buttons);
  item.append(group);
}

// An answer's extras: its sources, why it may be wrong, who holds the conversation, the rating buttons.
function finishAnswer(item, answer) {
  addSources(item, answer.sources);
  if (answer.degraded) {
    // The reason names the step and what happened to it ("generate failed", "deadline exceeded").
    const why = answer.degradedReason ? ` (${answer.degradedReason})` : "";
    addNotice(item, "degraded", `Part of the bot could not answer${why}: this is a fallback reply.`);
  }
  if (answer.interrupted) addNotice(item, "info", "A newer message interrupted this one.");
  if (answer.heldBy === "agent") {
    const where = live.following ? "their replies appear here" : "reload the page to see their replies";
    addNotice(item, "info", `A person is handling this conversation now; ${where}.`);
  }
  if (answer.turnId && item.querySelector(".text").textContent) addFeedback(item, answer.turnId, answer.rating);
  addApprovals(item, answer.approvals);
}

// --- the conversation's score ------------------------------------------------------------------

// One score per conversation, 1 to 5: a second click replaces it. The API refuses a conversation with no
// answer yet (nothing to score): said in the status line.
const scoreButtons = [1, 2, 3, 4, 5].map((score) => {
  const button = element("button", "rate", String(score));
  button.type = "button";
  button.setAttribute("aria-label", `${score} of 5`);
  button.setAttribute("aria-pressed", "false");
  button.addEventListener("click", async () => {
    try {
      await api.score(conversationId, score);
      for (const other of scoreButtons) other.setAttribute("aria-pressed", String(other === button));
      $("score-status").textContent = `Thank you: you gave this conversation ${score} of 5.`;
    } catch (error) {
      const notYet = error instanceof ApiError && error.code === "nothing_to_score";
      $("score-status").textContent = notYet ? "Send a message first: there is nothing to score yet." : error.message;
    }
  });
  return button;
});
$("score-buttons").append(...scoreButtons);

function clearScore() {
  for (const button of scoreButtons) button.setAttribute("aria-pressed", "false");
  $("score-status").textContent = "";
}

// --- approvals -----------------------------------------------------------------------------------

// A tool call the bot's agent waits to make: the user decides the ones that are theirs (`user`); a
// member of the team decides the others, in the operator console.
function addApprovals(item, approvals) {
  for (const call of approvals || []) {
    if (item.querySelector(`[data-call-id="${CSS.escape(call.call_id)}"]`)) continue;
    const group = element("div", "approval");
    group.dataset.callId = call.call_id;
    if (call.approval !== "user") {
      group.append(element("p", "notice info", `${call.name} waits for a member of our team to approve it.`));
      item.append(group);
      continue;
    }
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `Approve ${call.name}?`);
    const buttons = [
      ["Approve", true],
      ["Deny", false],
    ].map(([label, approve]) => {
      const button = element("button", approve ? "approve" : "deny", label);
      button.type = "button";
      button.addEventListener("click", () => decide(group, call, approve, buttons));
      return button;
    });
    group.append(...buttons);
    item.append(group);
  }
}

async function decide(group, call, approve, buttons) {
  for (const button of buttons) button.disabled = true;
  try {
    const decided = await api.approve(conversationId, call.call_id, approve);
    group.replaceChildren(element("p", "notice info", approve ? "You approved it." : "You said no."));
    if (decided.reply) showResumed(decided.reply);
  } catch (error) {
    for (const button of buttons) button.disabled = false;
    showError(error, group);
  }
}

// What the agent said once its approvals were decided: a bot message of its own.
function showResumed(reply) {
  const id = `${reply.turn_id}:bot`;
  if (live.shown.has(id)) return; // the event stream brought it first
  live.shown.add(id);
  const item = addMessage("bot", reply.reply.text);
  finishAnswer(item, {
    sources: reply.reply.sources,
    degraded: reply.degraded,
    degradedReason: reply.degraded_reason,
    turnId: reply.turn_id,
    approvals: reply.approvals,
  });
}

// After a reload: the calls still waiting for the user's decision, under the newest bot message.
async function showPendingApprovals() {
  let state;
  try {
    state = await api.state(conversationId);
  } catch {
    return; // no state (no conversation yet): nothing waits
  }
  const bots = ui.messages.querySelectorAll("li.message.bot");
  const target = bots[bots.length - 1];
  if (target && state.pending_approvals?.length) addApprovals(target, state.pending_approvals);
}

async function loadHistory() {
  const loading = (live.loading += 1); // a newer call (a new conversation, a new key) supersedes this one
  ui.messages.replaceChildren();
  lastAnswer = null;
  live.shown.clear();
  live.waiting = [];
  live.ready = false;
  await follow(); // open before the transcript is read: a message sent in between is in one or the other
  if (loading !== live.loading) return;
  let items;
  try {
    items = await api.messages(conversationId);
  } catch (error) {
    if (loading !== live.loading) return;
    showLive(); // no transcript (none yet, or it failed): what arrives live is shown all the same
    if (error instanceof ApiError && error.code === "conversation_not_found") return; // not started yet
    return showError(error);
  }
  if (loading !== live.loading) return;
  for (const message of items) {
    if (message.role === "bot" && !message.text) continue; // a turn answered by a person, not the bot
    const item = addMessage(message.role, message.text, message.author);
    live.shown.add(`${message.turn_id}:${message.role}`);
    if (message.role !== "bot") continue;
    finishAnswer(item, {
      sources: message.sources,
      degraded: message.degraded,
      turnId: message.turn_id,
      rating: message.rating,
    });
    lastAnswer = { turnId: message.turn_id };
  }
  showLive();
  refreshDebug();
  showPendingApprovals();
}

// --- a person's messages, live -----------------------------------------------------------------

// The conversation's event stream brings what a person writes from the operator console, and the
// handoff and handback notices, as they happen. The page's own turns come with their own stream.
const live = {
  following: false, // the stream is open (not while the conversation has no turn yet, or streaming is off)
  controller: null,
  shown: new Set(), // `${turn_id}:${role}` of the transcript entries on the page
  ready: false, // the transcript is on the page; events that came before it wait in `waiting`
  waiting: [],
  loading: 0, // counts loadHistory calls: only the newest one fills the page
};
// `bot_message`: what the bot's agent said when it went on after approvals (a person's, say).
const LIVE_ROLES = { agent_message: "agent", handoff: "system", handback: "system", bot_message: "bot" };

function follow() {
  live.controller?.abort();
  const controller = (live.controller = new AbortController());
  return new Promise((opened) => {
    setTimeout(opened, 3000); // an API that cannot be reached: show the transcript all the same
    const onEvent = (event) => {
      if (!LIVE_ROLES[event.type]) return; // a streamed turn's tokens: its own request shows them
      live.waiting.push(event.data);
      if (live.ready) showLive();
    };
    const onOpen = () => {
      live.following = true;
      opened();
    };
    api
      .follow(conversationId, onEvent, { signal: controller.signal, onOpen })
      .catch(() => {}) // 404: no turn yet (the first answer starts following); 409: streaming is off
      .finally(() => {
        if (live.controller === controller) live.following = false;
        opened();
      });
  });
}

function showLive() {
  live.ready = true;
  for (const message of live.waiting.splice(0)) {
    const id = `${message.turn_id}:${message.role}`;
    if (live.shown.has(id)) continue; // in the transcript already
    live.shown.add(id);
    const item = addMessage(message.role, message.text, message.author);
    if (message.role === "bot") finishAnswer(item, { turnId: message.turn_id });
  }
}

// --- sending -----------------------------------------------------------------------------------

async function send(text) {
  addMessage("user", text);
  const item = addMessage("bot", "");
  const body = item.querySelector(".text");
  const typing = element("span", "typing", "\u2026");
  typing.setAttribute("aria-hidden", "true");
  body.append(typing);
  ui.status.textContent = "The bot is typing\u2026";
  // Busy while tokens arrive: screen readers announce the answer once, not word by word.
  item.setAttribute("aria-busy", "true");
  let streamed = "";
  try {
    await api.sendTurn(conversationId, text, {
      nlu: (nlu) => (lastAnswer = { nlu }),
      token: (token) => {
        streamed += token;
        body.textContent = streamed;
      },
      restart: () => {
        streamed = "";
        body.replaceChildren(typing);
      },
      final: (reply) => {
        if (!live.following) follow(); // the conversation's first turn: now it has an event stream
        if (customerToken) showMemory(); // what this turn taught the bot, if they let it remember
        body.textContent = reply.reply.text; // the reply as recorded, which the tokens only previewed
        finishAnswer(item, {
          sources: reply.reply.sources,
          degraded: reply.degraded,
          degradedReason: reply.degraded_reason,
          interrupted: reply.interrupted,
          heldBy: reply.held_by,
          turnId: reply.turn_id,
          approvals: reply.approvals,
        });
        lastAnswer = { turnId: reply.turn_id, nlu: reply.nlu, timings: reply.timings_ms };
      },
    });
  } catch (error) {
    typing.remove();
    showError(error, item);
  } finally {
    item.setAttribute("aria-busy", "false");
    ui.status.textContent = "";
    item.scrollIntoView({ block: "end" });
  }
  refreshDebug();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  if (!localStorage.getItem(KEY_STORAGE)) return askForKey("Enter the API key first.");
  ui.text.value = "";
  ui.text.focus(); // after a click on Send too: the next message is typed at once
  send(text);
});

ui.text.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; not while an input method is composing a character.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

$("new-conversation").addEventListener("click", () => {
  startConversation(newId());
  ui.text.focus();
});

function startConversation(id) {
  conversationId = id;
  clearScore();
  localStorage.setItem(CONVERSATION_STORAGE, id);
  loadHistory();
}

// --- the signed-in customer and their memory ---------------------------------------------------

async function useCustomer(user) {
  customer = user || null;
  customerToken = null;
  ui.customerId.value = customer || "";
  ui.remember.disabled = !customer;
  ui.remember.checked = false;
  ui.remembered.replaceChildren();
  ui.customerStatus.textContent = "";
  if (!customer) return void localStorage.removeItem(CUSTOMER_STORAGE);
  localStorage.setItem(CUSTOMER_STORAGE, customer);
  try {
    const minted = await server.json("/v1/end-user-tokens", { method: "POST", body: { user: customer, ttl_seconds: 3600 } });
    customerToken = minted.token;
    await showMemory();
  } catch (error) {
    ui.customerStatus.textContent = error.message;
  }
}

function memoryPath() {
  return `/v1/users/${encodeURIComponent(customer)}/memory`;
}

async function showMemory() {
  try {
    const memory = await api.json(memoryPath());
    ui.remember.checked = memory.consent.consented === true;
    ui.remembered.replaceChildren(
      ...memory.items.map((item) => element("li", null, `${item.kind}: ${item.value}`)),
    );
  } catch (error) {
    ui.customerStatus.textContent = error.message;
  }
}

ui.customerForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!localStorage.getItem(KEY_STORAGE)) return askForKey("Enter the API key first.");
  await useCustomer(ui.customerId.value.trim());
  startConversation(newId()); // the old conversation is not theirs
});

ui.remember.addEventListener("change", async () => {
  const consented = ui.remember.checked;
  try {
    const answer = await api.json(`${memoryPath()}/consent`, { method: "PUT", body: { consented } });
    ui.customerStatus.textContent = consented
      ? "I'll remember what you tell me about yourself across conversations."
      : `I've forgotten everything I remembered (${answer.forgotten}) and will keep nothing more.`;
    await showMemory();
  } catch (error) {
    ui.remember.checked = !consented;
    ui.customerStatus.textContent = error.message;
  }
});

// --- the debug panel ---------------------------------------------------------------------------

ui.debugToggle.addEventListener("click", () => {
  const open = ui.debugToggle.getAttribute("aria-expanded") !== "true";
  ui.debugToggle.setAttribute("aria-expanded", String(open));
  ui.debug.hidden = !open;
  refreshDebug();
});

function fill(id, entries) {
  const target = $(id);
  if (!entries.length) return void (target.textContent = "\u2014");
  const list = element("ul");
  for (const [name, value] of entries) list.append(element("li", null, `${name}: ${value}`));
  target.replaceChildren(list);
}

function show(id, text) {
  $(id).textContent = text ?? "\u2014";
}

// Filled only while open: the state query and the lineage are calls the chat itself does not need.
async function refreshDebug() {
  if (ui.debug.hidden) return;
  show("debug-conversation", conversationId);
  showTemporalLink();
  const answer = lastAnswer;
  if (answer?.turnId && !answer.timings) {
    // Loaded from the transcript: the answer's lineage holds its NLU result and timings.
    answer.timings = {};
    try {
      const { lineage } = await api.lineage(conversationId, answer.turnId);
      Object.assign(answer, { nlu: lineage?.nlu, timings: lineage?.timings_ms || {} });
    } catch {
      // An answer recorded without lineage (a failed record step): nothing more to show.
    }
  }
  const intent = answer?.nlu?.intent;
  show("debug-intent", intent?.name);
  show("debug-confidence", intent ? intent.confidence.toFixed(2) : null);
  fill("debug-entities", (answer?.nlu?.entities || []).map((e) => [e.entity, e.value]));
  fill("debug-timings", Object.entries(answer?.timings || {}).map(([step, ms]) => [step, `${Math.round(ms)} ms`]));
  try {
    const state = await api.state(conversationId);
    show("debug-flow", state.active_flow);
    fill("debug-slots", Object.entries(state.slots).map(([name, value]) => [name, JSON.stringify(value)]));
  } catch (error) {
    // A conversation without turns has no workflow yet; anything else is worth showing here.
    const missing = error instanceof ApiError && error.status === 404;
    show("debug-flow", missing ? null : error.message);
    fill("debug-slots", []);
  }
}

async function showTemporalLink() {
  const link = $("debug-temporal");
  try {
    caller = caller || (await api.me());
    link.href = await temporalUrl(caller.tenant, conversationId);
  } catch {
    return;
  }
  link.hidden = false;
}

// --- start -------------------------------------------------------------------------------------

if (!conversationId) {
  conversationId = newId();
  localStorage.setItem(CONVERSATION_STORAGE, conversationId);
}
if (localStorage.getItem(KEY_STORAGE)) {
  (customer ? useCustomer(customer) : Promise.resolve()).then(loadHistory);
  ui.text.focus();
} else {
  askForKey();
}
