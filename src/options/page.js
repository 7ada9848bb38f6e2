// Progressive enhancement for the options page: when an option changes, ask for a preview
// (the same POST the Preview button sends) and put its section in place. Without this script
// the Preview button does the same with a whole page.
"use strict";
(function () {
  const form = document.getElementById("options");
  if (!form || !document.getElementById("preview")) { return; }
  let timer = null;
  let asked = 0;
  async function refresh() {
    const mine = ++asked;
    const data = new URLSearchParams(new FormData(form));
    data.set("action", "preview");
    try {
      // The attribute, not `form.action`: the buttons are named "action".
      const answer = await fetch(form.getAttribute("action"), {
        method: "POST",
        body: data,
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
      });
      if (mine !== asked) { return; }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("preview");
      const current = document.getElementById("preview");
      if (fresh && current) { current.replaceWith(fresh); }
      const error = page.getElementById("error");
      const shown = document.getElementById("error");
      if (shown) { shown.remove(); }
      if (error) { form.before(error); }
    } catch (e) {
      // The Preview button still works.
    }
  }
  form.addEventListener("change", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  });
})();
