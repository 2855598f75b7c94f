// Runs athm_sync/static/athm_sync/checkout.js against a stand-in page, fetch and clock, and
// prints what the customer would see. Used by tests/test_checkout_script.py:
//   node run_checkout_script.js <script> <answers JSON> <milliseconds to run>
// Each answer is {"status": 200, "body": {...}} or "network error", served in order.
"use strict";
const fs = require("fs");

const [scriptPath, answersJson, runFor] = process.argv.slice(2);
const answers = JSON.parse(answersJson);
let now = 0;
const timers = [];
const seen = { fetches: [], went: [], countdowns: [] };

function element(attributes) {
  return {
    textContent: "",
    hidden: true,
    getAttribute: (name) => (name in attributes ? attributes[name] : null),
  };
}
const message = element({});
const notice = element({});
const countdown = element({});
const root = element({
  "data-status-url": "/athm/checkout/1/token/status/",
  "data-poll-ms": "2000",
  "data-seconds-left": "125",
  "data-offline-message": "Connection lost",
});
root.querySelector = (selector) =>
  ({ "[data-countdown]": countdown, "[data-message]": message, "[data-notice]": notice })[
    selector
  ];

function fetch(url, options) {
  seen.fetches.push({ at: now, url, accept: options.headers.Accept });
  const answer = answers.shift();
  if (answer === undefined || answer === "network error") {
    return Promise.reject(new Error("network error"));
  }
  return Promise.resolve({
    status: answer.status,
    ok: answer.status >= 200 && answer.status < 300,
    json: () => Promise.resolve(answer.body),
  });
}

global.document = { getElementById: (id) => (id === "athm-checkout" ? root : null) };
global.fetch = fetch;
global.Date = { now: () => now };
global.window = {
  fetch,
  setTimeout: (callback, ms) => timers.push({ at: now + ms, callback }),
  setInterval: (callback, ms) => timers.push({ at: now + ms, callback, every: ms }),
  location: {
    replace: (url) => seen.went.push(url),
    reload: () => seen.went.push("(reload)"),
  },
};

async function main() {
  new Function(fs.readFileSync(scriptPath, "utf8"))();
  seen.countdowns.push(countdown.textContent);
  const end = Number(runFor);
  for (;;) {
    timers.sort((a, b) => a.at - b.at);
    const timer = timers.shift();
    if (!timer || timer.at > end) break;
    now = timer.at;
    timer.callback();
    if (timer.every) timers.push({ ...timer, at: now + timer.every });
    for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
    if (!timer.every) {
      seen.countdowns.push(countdown.textContent);
    }
  }
  seen.message = message.textContent;
  seen.notice = notice.hidden ? null : notice.textContent;
  seen.countdown = countdown.textContent;
  process.stdout.write(JSON.stringify(seen));
}

main();
