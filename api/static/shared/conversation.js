// One conversation on a page: its transcript, a person's messages as they come, a turn sent and its
// reply streamed in, sources, ratings and the approvals the bot's agent waits for. The chat page and the
// embeddable widget both show a conversation through this.
// Text from the API is only ever set as textContent, never as HTML: a reply cannot inject markup.
import { ApiError } from "./api.js";
import { addSources, element } from "./page.js";

const SPEAKERS = { user: "You", bot: "Bot", agent: "Agent", system: "Notice" };
// The conversation's event stream: what a person writes from the operator console, the handoff and
// handback notices, and `bot_message`, what the bot's agent said when it went on after approvals.
const LIVE_ROLES = { agent_message: "agent", handoff: "system", handback: "system", bot_message: "bot" };

export class ConversationView {
  // `messages`: the <ol> of the transcript; `status`: a live region for "the bot is typing";
  // `onRefused(error)`: the API refused the key or token (401).
  constructor({ api, messages, status, onRefused = () => {} }) {
    this.api = api;
    this.messages = messages;
    this.status = status;
    this.onRefused = onRefused;
    this.id = null;
    this.live = {
      following: false, // the stream is open (not while the conversation has no turn yet, or streaming is off)
      controller: null,
      shown: new Set(), // `${turn_id}:${role}` of the transcript entries on the page
      ready: false, // the transcript is on the page; events that came before it wait in `waiting`
      waiting: [],
      loading: 0, // counts load calls: only the newest one fills the page
    };
  }

  // --- the transcript ------------------------------------------------------------------------

  addMessage(role, text, author) {
    const item = element("li", `message ${role}`);
    const who = author && role === "agent" ? `${SPEAKERS.agent} (${author})` : SPEAKERS[role] || role;
    // Bubbles show who speaks by their place and colour; screen readers hear it said.
    const quiet = role === "user" || role === "bot" ? " visually-hidden" : "";
    item.append(element("span", `speaker${quiet}`, `${who}: `), element("p", "text", text));
    this.messages.append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  addNotice(item, className, text) {
    item.append(element("p", `notice ${className}`, text));
  }

  showError(error, item) {
    if (error instanceof ApiError && error.status === 401) this.onRefused(error);
    const text = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
    const hint = error instanceof ApiError && error.code === "conversation_ended" ? ": start a new conversation" : "";
    const target = item || this.addMessage("system", "");
    target.setAttribute("role", "alert");
    this.addNotice(target, "error", text + hint);
  }

  addFeedback(item, turnId, rated = null) {
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
          await this.api.rate(this.id, turnId, rating);
          // The store keeps one rating per answer: the newest replaces the other.
          for (const other of buttons) other.setAttribute("aria-pressed", String(other === button));
        } catch (error) {
          this.showError(error, item);
        }
      });
      return button;
    });
    group.append(...buttons);
    item.append(group);
  }

  // An answer's extras: its sources, why it may be wrong, who holds the conversation, the rating buttons.
  finishAnswer(item, answer) {
    addSources(item, answer.sources);
    if (answer.degraded) {
      // The reason names the step and what happened to it ("generate failed", "deadline exceeded").
      const why = answer.degradedReason ? ` (${answer.degradedReason})` : "";
      this.addNotice(item, "degraded", `Part of the bot could not answer${why}: this is a fallback reply.`);
    }
    if (answer.interrupted) this.addNotice(item, "info", "A newer message interrupted this one.");
    if (answer.heldBy === "agent") {
      const where = this.live.following ? "their replies appear here" : "reload the page to see their replies";
      this.addNotice(item, "info", `A person is handling this conversation now; ${where}.`);
    }
    if (answer.turnId && item.querySelector(".text").textContent) this.addFeedback(item, answer.turnId, answer.rating);
    this.addApprovals(item, answer.approvals);
  }

  // --- approvals -------------------------------------------------------------------------------

  // A tool call the bot's agent waits to make: the user decides the ones that are theirs (`user`); a
  // member of the team decides the others, in the operator console.
  addApprovals(item, approvals) {
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
        button.addEventListener("click", () => this.decide(group, call, approve, buttons));
        return button;
      });
      group.append(...buttons);
      item.append(group);
    }
  }

  async decide(group, call, approve, buttons) {
    for (const button of buttons) button.disabled = true;
    try {
      const decided = await this.api.approve(this.id, call.call_id, approve);
      group.replaceChildren(element("p", "notice info", approve ? "You approved it." : "You said no."));
      if (decided.reply) this.showResumed(decided.reply);
    } catch (error) {
      for (const button of buttons) button.disabled = false;
      this.showError(error, group);
    }
  }

  // What the agent said once its approvals were decided: a bot message of its own.
  showResumed(reply) {
    const id = `${reply.turn_id}:bot`;
    if (this.live.shown.has(id)) return; // the event stream brought it first
    this.live.shown.add(id);
    const item = this.addMessage("bot", reply.reply.text);
    this.finishAnswer(item, {
      sources: reply.reply.sources,
      degraded: reply.degraded,
      degradedReason: reply.degraded_reason,
      turnId: reply.turn_id,
      approvals: reply.approvals,
    });
  }

  // After a reload: the calls still waiting for the user's decision, under the newest bot message.
  async showPendingApprovals() {
    let state;
    try {
      state = await this.api.state(this.id);
    } catch {
      return; // no state (no conversation yet): nothing waits
    }
    const bots = this.messages.querySelectorAll("li.message.bot");
    const target = bots[bots.length - 1];
    if (target && state.pending_approvals?.length) this.addApprovals(target, state.pending_approvals);
  }

  // Show conversation `id`: its transcript, then what comes live. Resolves to the newest answer's turn
  // id, or null (none yet, or a newer call took over); `refused(error)` is called instead when the
  // transcript cannot be read (not the caller's, say).
  async load(id, { refused = null } = {}) {
    this.id = id;
    const live = this.live;
    const loading = (live.loading += 1); // a newer call (a new conversation, a new key) supersedes this one
    this.messages.replaceChildren();
    live.shown.clear();
    live.waiting = [];
    live.ready = false;
    await this.follow(); // open before the transcript is read: a message sent in between is in one or the other
    if (loading !== live.loading) return null;
    let items;
    try {
      items = await this.api.messages(id);
    } catch (error) {
      if (loading !== live.loading) return null;
      this.showLive(); // no transcript (none yet, or it failed): what arrives live is shown all the same
      if (error instanceof ApiError && error.code === "conversation_not_found") return null; // not started yet
      if (refused) return void refused(error);
      this.showError(error);
      return null;
    }
    if (loading !== live.loading) return null;
    let newest = null;
    for (const message of items) {
      if (message.role === "bot" && !message.text) continue; // a turn answered by a person, not the bot
      const item = this.addMessage(message.role, message.text, message.author);
      live.shown.add(`${message.turn_id}:${message.role}`);
      if (message.role !== "bot") continue;
      this.finishAnswer(item, {
        sources: message.sources,
        degraded: message.degraded,
        turnId: message.turn_id,
        rating: message.rating,
      });
      newest = message.turn_id;
    }
    this.showLive();
    this.showPendingApprovals();
    return newest;
  }

  // Stop following (the page lets the conversation go).
  close() {
    this.live.loading += 1;
    this.live.controller?.abort();
  }

  // --- a person's messages, live ---------------------------------------------------------------

  // The conversation's event stream brings what a person writes from the operator console, and the
  // handoff and handback notices, as they happen. The page's own turns come with their own stream.
  follow() {
    const live = this.live;
    live.controller?.abort();
    const controller = (live.controller = new AbortController());
    return new Promise((opened) => {
      setTimeout(opened, 3000); // an API that cannot be reached: show the transcript all the same
      const onEvent = (event) => {
        if (!LIVE_ROLES[event.type]) return; // a streamed turn's tokens: its own request shows them
        live.waiting.push(event.data);
        if (live.ready) this.showLive();
      };
      const onOpen = () => {
        live.following = true;
        opened();
      };
      this.api
        .follow(this.id, onEvent, { signal: controller.signal, onOpen })
        .catch(() => {}) // 404: no turn yet (the first answer starts following); 409: streaming is off
        .finally(() => {
          if (live.controller === controller) live.following = false;
          opened();
        });
    });
  }

  showLive() {
    const live = this.live;
    live.ready = true;
    for (const message of live.waiting.splice(0)) {
      const id = `${message.turn_id}:${message.role}`;
      if (live.shown.has(id)) continue; // in the transcript already
      live.shown.add(id);
      const item = this.addMessage(message.role, message.text, message.author);
      if (message.role === "bot") this.finishAnswer(item, { turnId: message.turn_id });
    }
  }

  // --- sending ---------------------------------------------------------------------------------

  // Send `text` as a turn and show its reply as it streams in. Resolves to the final reply, or null when
  // the turn failed (its error shown in place of the reply).
  async send(text) {
    this.addMessage("user", text);
    const item = this.addMessage("bot", "");
    const body = item.querySelector(".text");
    const typing = element("span", "typing", "\u2026");
    typing.setAttribute("aria-hidden", "true");
    body.append(typing);
    this.status.textContent = "The bot is typing\u2026";
    // Busy while tokens arrive: screen readers announce the answer once, not word by word.
    item.setAttribute("aria-busy", "true");
    let streamed = "";
    let answered = null;
    try {
      await this.api.sendTurn(this.id, text, {
        nlu: () => {},
        token: (token) => {
          streamed += token;
          body.textContent = streamed;
        },
        restart: () => {
          streamed = "";
          body.replaceChildren(typing);
        },
        final: (reply) => {
          if (!this.live.following) this.follow(); // the conversation's first turn: now it has an event stream
          body.textContent = reply.reply.text; // the reply as recorded, which the tokens only previewed
          this.finishAnswer(item, {
            sources: reply.reply.sources,
            degraded: reply.degraded,
            degradedReason: reply.degraded_reason,
            interrupted: reply.interrupted,
            heldBy: reply.held_by,
            turnId: reply.turn_id,
            approvals: reply.approvals,
          });
          answered = reply;
        },
      });
    } catch (error) {
      typing.remove();
      this.showError(error, item);
    } finally {
      item.setAttribute("aria-busy", "false");
      this.status.textContent = "";
      item.scrollIntoView({ block: "end" });
    }
    return answered;
  }
}
