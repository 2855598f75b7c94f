// Loads the sandbox's stand-in for Evertec's athmovil_base.js from a running sandbox, runs it
// against a stand-in page and clock, clicks its button and plays the customer; its API calls go
// to the real sandbox. Prints what happened as JSON. Used by tests/test_sandbox_phone.py:
//   node run_button_script.js <sandbox URL> <ATHM_Checkout JSON> <plan> <milliseconds to run>
// Plans, carried out once the script has seen the payment OPEN: "approve" / "decline" (the
// sandbox's phone page, as a person would), "modal-cancel" (the modal's cancel button),
// "expire" (nothing; when the page's clock passes the timeout, so does the sandbox's),
// "none", "double-click" (a second click on the button while the first payment waits).
"use strict";

const [base, configJson, plan, runFor] = process.argv.slice(2);
const config = JSON.parse(configJson);
const realFetch = globalThis.fetch;
const SCRIPT = "/api/modal/js/athmovil_base.js";
let now = 0;
let timers = [];
const inflight = new Set();
const seen = { calls: [], callbacks: [], modals: [] };
let ecommerceId = null;
let acted = false;

function track(promise) {
  inflight.add(promise);
  promise.then(
    () => inflight.delete(promise),
    () => inflight.delete(promise)
  );
  return promise;
}

function element(tag) {
  return {
    tagName: tag.toUpperCase(),
    className: "",
    textContent: "",
    attributes: {},
    children: [],
    parentNode: null,
    listeners: {},
    setAttribute(name, value) {
      this.attributes[name] = String(value);
    },
    appendChild(child) {
      child.parentNode = this;
      this.children.push(child);
      return child;
    },
    removeChild(child) {
      this.children = this.children.filter((node) => node !== child);
      child.parentNode = null;
      return child;
    },
    addEventListener(type, listener) {
      (this.listeners[type] = this.listeners[type] || []).push(listener);
    },
    click() {
      (this.listeners.click || []).forEach((listener) => listener({ preventDefault() {} }));
    },
  };
}

const holder = element("div");
const body = element("body");
const realAppend = body.appendChild.bind(body);
body.appendChild = (child) => {
  realAppend(child);
  const link = child.children.find((node) => node.tagName === "A");
  seen.modals.push({
    at: now,
    message: child.children[0].textContent,
    link: link ? link.attributes.href : null,
  });
  return child;
};
const document = {
  currentScript: { src: base + SCRIPT },
  readyState: "complete",
  body,
  createElement: element,
  getElementById: (id) => (id === "ATHMovil_Checkout_Button_payment" ? holder : null),
  addEventListener() {},
};

async function send(url, options) {
  const response = await realFetch(url, { redirect: "manual", ...options });
  const text = await response.text();
  return { status: response.status, ok: response.ok, text };
}

async function act() {
  if (plan === "approve" || plan === "decline") {
    const digits = String(config.phoneNumber).replace(/\D/g, "");
    const answer = await send(`${base}/phone/${digits}/${ecommerceId}/${plan}`, { method: "POST" });
    seen.acted = answer.status;
  } else if (plan === "modal-cancel") {
    const modal = body.children[0];
    modal.children.find((node) => node.className === "athm-modal-cancel").click();
  } else if (plan === "double-click") {
    holder.children[0].click();
  }
}

function pageFetch(url, options) {
  const path = url.startsWith(base) ? url.slice(base.length) : url;
  const headers = options.headers || {};
  seen.calls.push({ at: now, path, method: options.method, bearer: "Authorization" in headers });
  return track(
    send(url, options).then(async (answer) => {
      const data = JSON.parse(answer.text);
      if (path.endsWith("/payment") && data.data) ecommerceId = data.data.ecommerceId;
      if (path.endsWith("/findPayment") && !acted) {
        acted = true;
        await act();
      }
      return { status: answer.status, ok: answer.ok, json: () => Promise.resolve(data) };
    })
  );
}

const window = {
  fetch: pageFetch,
  setTimeout: (callback, ms) => timers.push({ at: now + ms, callback }),
};
for (const [name, reader] of [
  ["authorizationATHM", "authorization"],
  ["cancelATHM", "findPaymentATHM"],
  ["expiredATHM", "findPaymentATHM"],
]) {
  window[name] = () => {
    seen.callbacks.push({ name, at: now });
    track(window[reader]().then((record) => (seen[name] = record)));
  };
}
const FakeDate = { now: () => now };

async function settle() {
  for (;;) {
    for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
    if (inflight.size === 0) return;
    await Promise.allSettled([...inflight]);
  }
}

async function main() {
  const served = await realFetch(base + SCRIPT);
  seen.contentType = served.headers.get("content-type");
  seen.cors = served.headers.get("access-control-allow-origin");
  // The page declares its config as Evertec shows, `const ATHM_Checkout = {...}`: a global
  // binding that is not a property of window.
  const page = `const ATHM_Checkout = ${JSON.stringify(config)};\n${await served.text()}`;
  new Function("window", "document", "Date", page)(window, document, FakeDate);
  await settle();
  const button = holder.children[0];
  seen.button = { className: button.className, text: button.textContent };
  button.click();
  await settle();
  const end = Number(runFor);
  const deadline = Number(config.timeout) * 1000;
  let expired = false;
  for (;;) {
    timers.sort((a, b) => a.at - b.at);
    const timer = timers.shift();
    if (!timer || timer.at > end) break;
    if (plan === "expire" && !expired && timer.at >= deadline) {
      expired = true;
      const seconds = Number(config.timeout) + 1;
      await send(`${base}/sandbox/clock/advance`, {
        method: "POST",
        body: JSON.stringify({ seconds }),
      });
    }
    now = timer.at;
    timer.callback();
    await settle();
  }
  seen.modalOpen = body.children.length > 0;
  seen.pendingTimers = timers.length;
  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(String((error && error.stack) || error));
  process.exit(1);
});
