// The chat page's HTTP client: every call to /v1, and a streamed turn that survives a dropped connection.
// The key travels only in the Authorization header, never in a URL (URLs end up in logs and history).

const SSE = "text/event-stream";
// Waits before each attempt to pick a dropped stream up again; then the turn is reported as lost.
const RESUME_DELAYS_MS = [300, 1000, 2500, 5000];

export class ApiError extends Error {
  constructor(status, code, message, retryAfterSeconds = 0) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterSeconds = retryAfterSeconds; // from Retry-After: how long the server asks to wait
  }
}

// A v4 UUID. crypto.randomUUID exists only in secure contexts (https, localhost); the API may well be
// served over plain http on a LAN address, where getRandomValues still works.
export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The API's error body is {"error": {"code", "message"}}; a proxy's may be anything.
async function errorOf(response) {
  const retryAfter = Number(response.headers.get("Retry-After")) || 0;
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.code, error.message, retryAfter);
  } catch {
    return new ApiError(response.status, "http_error", `The server answered ${response.status} ${response.statusText}.`);
  }
}

export class Api {
  // `key`: a function, for the key may change while the page is open. `base`: the API's origin, when the
  // page is another site's (the widget). `renew`: an async function that gets a new key when the API
  // refuses the one sent (401): the request is then sent once more (the widget's short-lived token).
  constructor(key, { base = "", renew = null } = {}) {
    this.key = key;
    this.base = base;
    this.renew = renew;
  }

  async fetch(path, { headers = {}, ...options } = {}) {
    const send = () => fetch(this.base + path, { ...options, headers: { ...headers, Authorization: `Bearer ${this.key()}` } });
    const response = await send();
    if (response.status !== 401 || !this.renew) return response;
    await this.renew();
    return send();
  }

  async json(path, { method = "GET", body } = {}) {
    const headers = body === undefined ? {} : { "Content-Type": "application/json" };
    const response = await this.fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  conversation(id) {
    return `/v1/conversations/${encodeURIComponent(id)}`;
  }

  // The newest `limit` messages of the transcript, oldest first.
  async messages(id, limit = 200) {
    const first = await this.json(`${this.conversation(id)}/messages?limit=${limit}`);
    if (first.total <= first.items.length) return first.items;
    const offset = first.total - limit;
    return (await this.json(`${this.conversation(id)}/messages?limit=${limit}&offset=${offset}`)).items;
  }

  state(id) {
    return this.json(this.conversation(id));
  }

  lineage(id, turnId) {
    return this.json(`${this.conversation(id)}/turns/${encodeURIComponent(turnId)}/lineage`);
  }

  rate(id, turnId, rating) {
    return this.json(`${this.conversation(id)}/turns/${encodeURIComponent(turnId)}/feedback`, {
      method: "POST",
      body: { rating },
    });
  }

  // The user's 1 to 5 score of the whole conversation; a second score replaces the first.
  score(id, score) {
    return this.json(`${this.conversation(id)}/satisfaction`, { method: "POST", body: { score } });
  }

  // Decide on a tool call the bot's agent waits to make: {call_id, approved, pending, reply}; `reply` is
  // what the agent said when it went on (once no call of its turn waits any more).
  approve(id, callId, approve, note = null) {
    return this.json(`${this.conversation(id)}/approvals/${encodeURIComponent(callId)}`, {
      method: "POST",
      body: { approve, note },
    });
  }

  // --- the operator console's calls ---

  // Who the key is: {tenant, scope, subject}.
  me() {
    return this.json("/v1/me");
  }

  // A page of conversations, most recently updated first: {items, total, limit, offset}.
  // Empty filters are left out of the query.
  conversations({ status, intent, degraded, q, limit = 50, offset = 0 } = {}) {
    const query = new URLSearchParams();
    if (status) query.set("status", status);
    if (intent) query.set("intent", intent);
    if (degraded) query.set("degraded", "true");
    if (q) query.set("q", q);
    query.set("limit", String(limit));
    query.set("offset", String(offset));
    return this.json(`/v1/conversations?${query}`);
  }

  // The deployment's bots with their releases and versions (admin scope).
  bots() {
    return this.json("/v1/bots");
  }

  // A bot's numbers per version, the stable beside the canary: {since, release, stable, canary, versions}.
  botNumbers(bot) {
    return this.json(`/v1/bots/${encodeURIComponent(bot)}/numbers`);
  }

  // A person takes the conversation over (agent or admin scope): the conversation's new state.
  handoff(id, { agent = null, reason = "requested" } = {}) {
    return this.json(`${this.conversation(id)}/handoff`, { method: "POST", body: { agent, reason } });
  }

  // A person's message to the user, while the conversation is handed off.
  agentMessage(id, text, agent = null) {
    return this.json(`${this.conversation(id)}/agent-messages`, { method: "POST", body: { text, agent } });
  }

  // The bot answers again: the conversation's new state.
  // A reminder the conversation holds, cancelled before it is sent (204: no body).
  async cancelReminder(id, reminderId) {
    const response = await this.fetch(`${this.conversation(id)}/reminders/${encodeURIComponent(reminderId)}`, { method: "DELETE" });
    if (!response.ok) throw await errorOf(response);
  }

  handback(id, agent = null) {
    return this.json(`${this.conversation(id)}/handback`, { method: "POST", body: { agent } });
  }

  // Follow a conversation's event stream (a person's messages, handoffs, handbacks, streamed turns)
  // until `signal` aborts: `on(event)` gets each {type, id, data}. Starts at the newest event
  // (the transcript has what came before: read it after `onOpen`, and nothing falls in between);
  // after a drop it resumes from the last event seen.
  async follow(id, on, { signal, onOpen = () => {} } = {}) {
    let lastId = null;
    for (let failures = 0; !signal?.aborted; ) {
      try {
        const start = lastId === null ? "?from_now=true" : "";
        const headers = lastId === null ? { Accept: SSE } : { Accept: SSE, "Last-Event-ID": lastId };
        const response = await this.fetch(`${this.conversation(id)}/events${start}`, { headers, signal });
        if (!response.ok) throw await errorOf(response);
        failures = 0;
        onOpen();
        for await (const event of readEvents(response)) {
          if (event.id !== null) lastId = event.id;
          on(event);
        }
      } catch (error) {
        if (signal?.aborted) return;
        // Refused (unknown conversation, streaming switched off, bad key): following cannot work.
        // Unavailable (503) or rate limited (429): later.
        if (error instanceof ApiError && ![429, 503].includes(error.status)) throw error;
      }
      failures += 1;
      await sleep(Math.min(RESUME_DELAYS_MS[RESUME_DELAYS_MS.length - 1], 250 * 2 ** failures));
    }
  }

  // Send a turn and follow its events. `on` gets nlu(data), token(text), restart(), final(reply).
  // Resolves once the reply is handed to on.final; rejects with an ApiError otherwise.
  async sendTurn(id, text, on) {
    const turnId = newId(); // the Idempotency-Key: a repeated request collects this turn, never makes another
    const turns = `${this.conversation(id)}/turns`;
    const post = (lastEventId) =>
      this.fetch(turns, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: SSE, "Idempotency-Key": turnId, ...lastEventId },
        body: JSON.stringify({ text }),
      });
    // EventSource cannot POST, and cannot send the key as a header: fetch reads the stream instead.
    const follow = (lastEventId) =>
      this.fetch(`${turns}/${encodeURIComponent(turnId)}/events`, { headers: { Accept: SSE, ...lastEventId } });

    let lastId = null;
    let next = post;
    let wait = 0; // what the server asked for (Retry-After), when it refused a request
    for (let attempt = 0; ; attempt += 1) {
      const request = next;
      next = follow; // after a drop: pick the turn's events up after the last one seen
      try {
        const response = await request(lastId === null ? {} : { "Last-Event-ID": lastId });
        if (response.status === 204) {
          // The server says the final event was delivered already; collect the reply from the turn itself.
          const status = await this.json(`${turns}/${encodeURIComponent(turnId)}`);
          if (status.reply) return on.final(status.reply);
        } else if (!response.ok) {
          throw await errorOf(response);
        } else if (!(response.headers.get("Content-Type") || "").startsWith(SSE)) {
          return on.final(await response.json()); // streaming is switched off for this conversation
        } else {
          for await (const event of readEvents(response)) {
            if (event.type === "final") return on.final(event.data);
            if (event.type === "error") throw new ApiError(event.data.status, event.data.code, event.data.message);
            if (event.id !== null) lastId = event.id;
            if (event.type === "token") on.token(event.data.text);
            else if (event.type === "restart") on.restart(); // the model is retried: its partial text is void
            else if (event.type === "nlu") on.nlu(event.data);
          }
        }
        // The stream ended without the final event: the connection dropped (or a proxy cut it).
      } catch (error) {
        // Unknown to the server, the turn never reached it: repeat the POST, which the key makes safe.
        if (error instanceof ApiError && error.code === "turn_not_found") next = post;
        else if (error instanceof ApiError && error.status !== 503) throw error;
        // 503: the service is overloaded (`overloaded`: the turn was not taken) or a dependency is down;
        // the same key makes the retry safe, and the wait is at least what the server asked for.
        if (error instanceof ApiError) {
          wait = error.retryAfterSeconds * 1000;
          if (error.code === "overloaded") next = post;
        }
        // Anything else is the network (fetch and the stream's reader reject with a TypeError): retry.
      }
      if (attempt >= RESUME_DELAYS_MS.length) {
        throw new ApiError(0, "connection_lost", "The connection was lost before the reply arrived. Please try again.");
      }
      await sleep(Math.max(RESUME_DELAYS_MS[attempt], wait));
      wait = 0;
    }
  }
}

// Server-sent events parsed from a fetch body: {type, id, data} with data decoded from JSON.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        // The API ends lines with \n (fastapi.sse); \r is tolerated at line ends only.
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let type = "message";
  let id = null;
  const data = [];
  for (const raw of block.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line || line.startsWith(":")) continue; // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { type, id, data: JSON.parse(data.join("\n")) } : null;
}
