/* The waiting page of athm_sync's checkout: polls its status endpoint, counts down to the
 * deadline, and goes where the answer says once the payment is settled. No framework, no build.
 * Without it the page refreshes itself (<noscript> meta refresh); every text comes from the
 * server, already in the customer's language (the JSON answer, or data attributes). */
(function () {
  "use strict";
  var root = document.getElementById("athm-checkout");
  if (!root || !root.getAttribute("data-status-url") || !window.fetch) {
    return;
  }
  var statusUrl = root.getAttribute("data-status-url");
  var pollMs = parseInt(root.getAttribute("data-poll-ms"), 10) || 2000;
  var offline = root.getAttribute("data-offline-message") || "";
  var secondsLeft = parseInt(root.getAttribute("data-seconds-left"), 10);
  var deadline = isNaN(secondsLeft) ? null : Date.now() + secondsLeft * 1000;
  var countdown = root.querySelector("[data-countdown]");
  var message = root.querySelector("[data-message]");
  var notice = root.querySelector("[data-notice]");
  var failures = 0;

  function show(element, text) {
    if (element) {
      element.textContent = text || "";
      element.hidden = !text;
    }
  }

  function tick() {
    if (deadline !== null && countdown) {
      var left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      var seconds = left % 60;
      countdown.textContent = Math.floor(left / 60) + ":" + (seconds < 10 ? "0" : "") + seconds;
    }
  }

  function later(ms) {
    window.setTimeout(poll, Math.max(500, ms));
  }

  function poll() {
    fetch(statusUrl, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    })
      .then(function (response) {
        if (response.status === 404) {
          window.location.reload(); // the page says "not found" in the customer's language
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (data === null) {
          return;
        }
        failures = 0;
        if (data.next) {
          window.location.replace(data.next);
          return;
        }
        show(message, data.message);
        show(notice, data.notice);
        if (data.state === "failed") {
          return; // never started: nothing more will change
        }
        if (typeof data.seconds_left === "number") {
          deadline = Date.now() + data.seconds_left * 1000;
        }
        later(data.retry_after ? data.retry_after * 1000 : pollMs);
      })
      .catch(function () {
        failures += 1;
        show(notice, offline);
        later(Math.min(pollMs * Math.pow(2, failures), 30000));
      });
  }

  tick();
  window.setInterval(tick, 1000);
  later(pollMs);
})();
