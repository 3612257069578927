// What the chat page and the operator console both do with the page: elements, sources as links,
// the page configuration and the link to a conversation in the Temporal Web UI.
// Text from the API is only ever set as textContent, never as HTML: a reply cannot inject markup.

export const KEY_STORAGE = "dialogue.apiKey"; // one key for both pages

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// Links to http(s) only: a source's address comes from the knowledge base, and `javascript:` must not run.
export function safeUrl(address) {
  try {
    const parsed = new URL(address, location.href);
    return ["http:", "https:"].includes(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

export function addSources(item, sources) {
  if (!sources || !sources.length) return;
  const list = element("ul", "sources");
  list.setAttribute("aria-label", "Sources");
  for (const source of sources) {
    const entry = element("li");
    const href = source.url && safeUrl(source.url);
    if (href) {
      const link = element("a", null, source.title || href);
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      entry.append(link);
    } else {
      entry.textContent = source.title || source.document_id;
    }
    list.append(entry);
  }
  item.append(list);
}

let config = null;

// /config.json, read once: {temporal_ui_url, namespace, workflow_id_prefix, development_key}.
export async function pageConfig() {
  if (!config) {
    const response = await fetch("/config.json");
    if (!response.ok) throw new Error(`/config.json answered ${response.status}`);
    config = await response.json();
  }
  return config;
}

// The key a local development stack (`dialogue up`) offers to pre-fill the key form with; none
// elsewhere, and none when that is the key stored already (just refused, or being changed).
export async function offeredKey() {
  const offered = (await pageConfig().catch(() => null))?.development_key;
  return offered && offered !== localStorage.getItem(KEY_STORAGE) ? offered : null;
}

// The key form both pages have ({keyForm, keyInput, keyStatus}): it stores the key and calls
// `saved()`. Returns `ask(message)`, which opens it pre-filled with an offered development key
// (or focuses it, keeping what is typed, when open already).
export function keyForm({ keyForm: form, keyInput: input, keyStatus: status }, saved) {
  async function ask(message = "") {
    if (status.textContent !== message) status.textContent = message; // a live region repeats what it is given
    if (!form.hidden) return input.focus();
    form.hidden = false;
    input.value = "";
    input.focus();
    // A local development stack (`dialogue up`) offers its key: pressing Save is all it takes.
    const offered = await offeredKey();
    if (offered && !input.value) input.value = offered;
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return ask("Enter a key.");
    localStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    status.textContent = "";
    form.hidden = true;
    saved();
  });
  return ask;
}

// The conversation's workflow in the Temporal Web UI: its id is `conv-<tenant>/<id>`.
export async function temporalUrl(tenant, conversationId) {
  const { temporal_ui_url: ui, namespace, workflow_id_prefix: prefix } = await pageConfig();
  const workflowId = `${prefix}${tenant}/${conversationId}`;
  return `${ui}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(workflowId)}`;
}
