// Runs athm_sync/static/athm_sync/button.js against a stand-in page, fetch and Evertec
// library, calls one of its callbacks and prints what it posted and where it went. Used by
// tests/test_checkout_button.py:
//   node run_callback_script.js <script> <scenario JSON>
// The scenario: {"callback": "authorizationATHM", "authorization": <answer or "throws">,
// "findPaymentATHM": <answer or "throws">, "answer": {"status": 200, "body": {...}} or
// "network error"}; a missing library answer means the library has no such function.
"use strict";
const fs = require("fs");
const vm = require("vm");

const [scriptPath, scenarioJson] = process.argv.slice(2);
const scenario = JSON.parse(scenarioJson);
const seen = { config: null, posts: [], went: [], error: null };

const elements = {
  "athm-checkout-config": { textContent: JSON.stringify({ total: 12.5, metadata1: "order-7" }) },
  "athm-checkout-callback": {
    textContent: JSON.stringify({
      url: "/athm/checkout/button/",
      signed: "the-signed-order",
      csrf_token: "the-csrf-token",
      offline_message: "Connection lost",
    }),
  },
  "athm-button-error": { textContent: "", hidden: true },
};

function fetch(url, options) {
  seen.posts.push({
    url,
    method: options.method,
    credentials: options.credentials,
    headers: options.headers,
    fields: Object.fromEntries(options.body),
  });
  const answer = scenario.answer;
  if (answer === "network error") {
    return Promise.reject(new Error("network error"));
  }
  return Promise.resolve({
    status: answer.status,
    ok: answer.status >= 200 && answer.status < 300,
    json: () => Promise.resolve(answer.body),
  });
}

function libraryCall(name) {
  if (!(name in scenario)) {
    return undefined;
  }
  return async () => {
    if (scenario[name] === "throws") {
      throw new Error(name + " failed");
    }
    return scenario[name];
  };
}

const context = {
  document: { getElementById: (id) => elements[id] || null },
  URLSearchParams,
  JSON,
  String,
  Error,
  Promise,
};
context.window = context;
context.fetch = fetch;
context.location = {
  assign: (url) => seen.went.push(url),
  reload: () => seen.went.push("(reload)"),
};
for (const name of ["authorization", "findPaymentATHM"]) {
  const call = libraryCall(name);
  if (call) {
    context[name] = call;
  }
}
vm.createContext(context);
vm.runInContext(fs.readFileSync(scriptPath, "utf8"), context);
seen.config = context.ATHM_Checkout;
seen.callbacks = ["authorizationATHM", "cancelATHM", "expiredATHM"].filter(
  (name) => typeof context[name] === "function",
);

(async () => {
  await context[scenario.callback]();
  if (scenario.twice) {
    await context[scenario.callback]();
  }
  const shown = elements["athm-button-error"];
  seen.error = shown.hidden ? null : shown.textContent;
  process.stdout.write(JSON.stringify(seen));
})();
