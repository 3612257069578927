// The one script tag a site adds to show the chat widget on its pages:
//   <script src="(the API's address)/widget.js" data-token-url="/dialogue-token" async></script>
// It adds <dialogue-chat> to the page, its data-* attributes as the element's (data-token-url: the site's
// own address that answers a short-lived end-user token; data-heading: the widget's title), and loads
// the element's module from the same API (a classic script: only it knows its own tag and address).
(() => {
  const script = document.currentScript;
  if (!script) return;
  const chat = document.createElement("dialogue-chat");
  chat.setAttribute("api", new URL(".", script.src).href.replace(/\/$/, ""));
  for (const [name, value] of Object.entries(script.dataset)) {
    chat.setAttribute(name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`), value);
  }
  const add = () => document.body.append(chat);
  if (document.body) add();
  else document.addEventListener("DOMContentLoaded", add);
  import(new URL("static/widget/widget.js", script.src).href);
})();
