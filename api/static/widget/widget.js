// <dialogue-chat>: the chat on any site's pages, in a shadow root (the page's styles and ours stay
// apart). loader.js (served as /widget.js) adds it; its attributes:
//   api        the API's address (the loader's own);
//   token-url  the site's own address that answers POST with {token, expires_at, user}: an end-user
//              token its server minted with its key (`POST /v1/end-user-tokens`). Without it, the API
//              mints an anonymous visitor's token, for origins the deployment lists. The page never holds
//              a long-lived key; the token is renewed before it expires, and at once if the API refuses it;
//   heading    the widget's title ("Chat with us").
// The conversation (transcript, streamed replies, sources, approvals, a person taking over and handing
// back, a dropped connection picked up again) is shown by the chat page's own ConversationView.
import { Api, ApiError, newId } from "../shared/api.js";
import { ConversationView } from "../shared/conversation.js";
import { element } from "../shared/page.js";

// widget.css first: its `all: initial` on the host comes before theme.css sets the font on it.
const STYLES = ["./widget.css", "../shared/theme.css", "../shared/conversation.css"];
// Renew the token once this share of its life has passed (and at once should the API refuse it).
const RENEW_AT = 0.8;
const RENEW_AT_LEAST_MS = 1000;

class DialogueChat extends HTMLElement {
  connectedCallback() {
    if (this.shadowRoot) return; // moved within the page: built once
    this.token = null;
    this.user = null;
    this.renewing = null;
    this.renewTimer = null;
    this.started = null;
    const base = (this.getAttribute("api") || new URL("../..", import.meta.url).href).replace(/\/$/, "");
    this.api = new Api(() => this.token || "", { base, renew: () => this.renew() });
    this.build(this.attachShadow({ mode: "open" }), this.getAttribute("heading") || "Chat with us");
  }

  disconnectedCallback() {
    clearTimeout(this.renewTimer);
    this.view?.close();
  }

  build(root, title) {
    for (const sheet of STYLES) {
      const link = element("link");
      link.rel = "stylesheet";
      link.href = new URL(sheet, import.meta.url).href;
      root.append(link);
    }
    const ui = {
      launcher: element("button", "launcher", title),
      panel: element("section", "panel"),
      heading: element("h2", null, title),
      close: element("button", "close", "\u00d7"),
      messages: element("ol", "messages"),
      status: element("p", "status"),
      composer: element("form", "composer"),
      label: element("label", "visually-hidden", "Message"),
      text: element("textarea"),
      send: element("button", null, "Send"),
    };
    ui.launcher.type = "button";
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-controls", "panel");
    ui.panel.id = "panel";
    ui.panel.hidden = true;
    ui.panel.setAttribute("role", "dialog");
    ui.panel.setAttribute("aria-labelledby", "heading");
    ui.heading.id = "heading";
    ui.close.type = "button";
    ui.close.setAttribute("aria-label", "Close the chat");
    ui.messages.setAttribute("aria-live", "polite");
    ui.messages.setAttribute("aria-label", "Messages");
    ui.status.setAttribute("role", "status");
    ui.label.htmlFor = "message";
    ui.text.id = "message";
    ui.text.rows = 2;
    ui.send.type = "submit";
    const bar = element("header", "bar");
    bar.append(ui.heading, ui.close);
    ui.composer.append(ui.label, ui.text, ui.send);
    ui.panel.append(bar, ui.messages, ui.status, ui.composer);
    root.append(ui.launcher, ui.panel);
    this.ui = ui;
    this.view = new ConversationView({
      api: this.api,
      messages: ui.messages,
      status: ui.status,
      // The API refused the token (a retry with a renewed one failed too): try once more later on.
      onRefused: (error) => error.code !== "no_token" && this.renew().catch(() => {}),
    });

    ui.launcher.addEventListener("click", () => (ui.panel.hidden ? this.open() : this.close()));
    ui.close.addEventListener("click", () => this.close());
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.close();
    });
    ui.text.addEventListener("keydown", (event) => {
      // Enter sends, Shift+Enter is a new line; not while an input method is composing a character.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        ui.composer.requestSubmit();
      }
    });
    ui.composer.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = ui.text.value.trim();
      if (!text) return;
      ui.text.value = "";
      ui.text.focus();
      if (await this.start()) this.view.send(text);
    });
  }

  open() {
    this.ui.panel.hidden = false;
    this.ui.launcher.setAttribute("aria-expanded", "true");
    this.ui.text.focus();
    this.start();
  }

  close() {
    this.ui.panel.hidden = true;
    this.ui.launcher.setAttribute("aria-expanded", "false");
    this.ui.launcher.focus();
  }

  // The first open: a token, then the user's conversation on this site (kept in this browser), or a new
  // one. Resolves to whether the chat can be used.
  start() {
    this.started ??= (async () => {
      try {
        await this.renew();
      } catch (error) {
        this.started = null; // the next open or message asks the site again
        this.view.showError(error);
        return false;
      }
      const kept = localStorage.getItem(this.storageKey());
      await this.show(kept || newId());
      return true;
    })();
    return this.started;
  }

  // Conversation `id`: one the token's user cannot read (another user's, on this browser) is left for a
  // new one.
  async show(id) {
    localStorage.setItem(this.storageKey(), id);
    await this.view.load(id, { refused: () => this.show(newId()) });
  }

  storageKey() {
    return `dialogue.widget:${this.api.base}:${this.user}`;
  }

  // A new token from the site's server, one request at a time however many calls were refused meanwhile.
  renew() {
    this.renewing ??= this.fetchToken().finally(() => (this.renewing = null));
    return this.renewing;
  }

  async fetchToken() {
    const minted = await (this.getAttribute("token-url") ? this.siteToken() : this.visitorToken());
    this.token = minted.token;
    this.user = minted.user || "";
    const left = new Date(minted.expires_at).getTime() - Date.now();
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => this.renew().catch(() => {}), Math.max(RENEW_AT_LEAST_MS, left * RENEW_AT));
  }

  // The site's server mints the token: its cookies (same origin) say who the user is; the API never sees them.
  async siteToken() {
    const response = await fetch(this.getAttribute("token-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new ApiError(response.status, "no_token", "The chat cannot start on this page right now.");
    return response.json();
  }

  // A site with no server of its own: the API mints an anonymous visitor's token for a page of an origin the
  // deployment lists (`DIALOGUE_WIDGET_ORIGINS`). The visitor's id stays in this browser, so a reload (or
  // a renewal) goes on as the same visitor, with their conversation.
  async visitorToken() {
    const kept = `dialogue.widget-visitor:${this.api.base}`;
    const response = await fetch(`${this.api.base}/v1/widget-sessions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ visitor: localStorage.getItem(kept) }),
    });
    if (!response.ok) throw new ApiError(response.status, "no_token", "The chat cannot start on this page right now.");
    const minted = await response.json();
    localStorage.setItem(kept, minted.user.replace(/^visitor-/, ""));
    return minted;
  }
}

if (!customElements.get("dialogue-chat")) customElements.define("dialogue-chat", DialogueChat);
