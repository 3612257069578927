// The chat page: the key form, the transcript, the composer, ratings and the debug panel.
// Text from the API is only ever set as textContent, never as HTML: a reply cannot inject markup.
import { Api, ApiError, newId } from "../shared/api.js";
import { ConversationView } from "../shared/conversation.js";
import { KEY_STORAGE, element, keyForm, temporalUrl } from "../shared/page.js";

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

const view = new ConversationView({
  api,
  messages: ui.messages,
  status: ui.status,
  onRefused: () => askForKey("The key was refused: enter another."),
});

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

async function loadHistory() {
  lastAnswer = null;
  const newest = await view.load(conversationId);
  if (newest) lastAnswer = { turnId: newest };
  refreshDebug();
}

// --- sending -----------------------------------------------------------------------------------

async function send(text) {
  const reply = await view.send(text);
  if (reply) {
    if (customerToken) showMemory(); // what this turn taught the bot, if they let it remember
    lastAnswer = { turnId: reply.turn_id, nlu: reply.nlu, timings: reply.timings_ms };
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
