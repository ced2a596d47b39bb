// layerboot console: the only script. Live refresh of a page's main part, and a question before a
// destructive button. Everything works without it (plain forms and links).
"use strict";

document.addEventListener("submit", function (event) {
  var button = event.submitter || event.target.querySelector("[data-confirm]");
  var question = button && button.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

(function () {
  var every = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (!every) {
    return;
  }
  function busy() {
    var active = document.activeElement;
    return active && ["INPUT", "SELECT", "TEXTAREA"].indexOf(active.tagName) >= 0;
  }
  function refresh() {
    if (document.hidden || busy()) {
      return;
    }
    fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok || response.redirected) {
          throw new Error("status " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var fresh = page.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main && !busy()) {
          main.replaceWith(fresh);
          document.body.setAttribute("data-refreshed", new Date().toISOString());
        }
      })
      .catch(function () { /* the next tick tries again; a lost session shows on the next click */ });
  }
  window.setInterval(refresh, every * 1000);
})();
