/*
 * A stand-in for Evertec's athmovil_base.js, served by the athm_sync sandbox at
 * /api/modal/js/athmovil_base.js. It talks only to the sandbox that served it.
 *
 * Like Evertec's: reads the global ATHM_Checkout config (publicToken, timeout, theme, lang,
 * total, subtotal, tax, metadata1, metadata2, items, phoneNumber), renders a button into
 * <div id="ATHMovil_Checkout_Button_payment">, and on click creates the payment, waits for the
 * customer (here: the sandbox's phone page), captures it with /authorization once the
 * customer confirmed, and calls the page's authorizationATHM(), cancelATHM() or expiredATHM().
 * The page reads the outcome with authorization() and findPaymentATHM(). See docs/sandbox.md
 * for what it imitates and what not.
 */
(function () {
  "use strict";
  var PATH = /\/api\/modal\/js\/athmovil_base\.js(\?.*)?$/;
  var API = "/api/business-transaction/ecommerce";
  var POLL_MS = 2000;
  var script = document.currentScript;
  var base = script && script.src ? script.src.replace(PATH, "") : "";
  var TEXT = {
    en: {
      button: "Pay with ATH Móvil",
      open: "Open ATH Móvil on your phone and confirm the payment of $",
      phone: "The sandbox's phone page",
      cancel: "Cancel",
      failed: "The payment could not be started: ",
      close: "Close",
      ask: "Your phone number with ATH Móvil",
      send: "Send the payment request",
    },
    es: {
      button: "Paga con ATH Móvil",
      open: "Abre ATH Móvil en tu teléfono y confirma el pago de $",
      phone: "La página del teléfono del sandbox",
      cancel: "Cancelar",
      failed: "No se pudo iniciar el pago: ",
      close: "Cerrar",
      ask: "Tu número de teléfono con ATH Móvil",
      send: "Enviar la solicitud de pago",
    },
  };
  // One payment at a time: a second click while one waits does nothing.
  var current = null;
  // The last payment started (what findPaymentATHM() asks about) and, once captured, its record.
  var latest = null;
  var completed = null;

  // Pages declare these with `const` or `function` at the top level: a `const` is a global
  // binding but not a property of window, so they are read by name first.
  function config() {
    /* global ATHM_Checkout */
    if (typeof ATHM_Checkout !== "undefined" && ATHM_Checkout) return ATHM_Checkout;
    return window.ATHM_Checkout || {};
  }

  function pageCallback(name) {
    /* global authorizationATHM, cancelATHM, expiredATHM */
    var named = {
      authorizationATHM: typeof authorizationATHM === "function" ? authorizationATHM : null,
      cancelATHM: typeof cancelATHM === "function" ? cancelATHM : null,
      expiredATHM: typeof expiredATHM === "function" ? expiredATHM : null,
    };
    return named[name] || (typeof window[name] === "function" ? window[name] : null);
  }

  function text() {
    return TEXT[config().lang === "es" ? "es" : "en"];
  }

  function call(path, body, token) {
    var headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    return window
      .fetch(base + API + path, { method: "POST", headers: headers, body: JSON.stringify(body) })
      .then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok || !answer || answer.status !== "success") {
            throw new Error((answer && answer.message) || "HTTP " + response.status);
          }
          return answer.data;
        });
      });
  }

  function find(payment) {
    var body = { ecommerceId: payment.ecommerceId, publicToken: config().publicToken };
    return call("/business/findPayment", body).then(function (data) {
      return Object.assign({}, data, { auth_token: payment.authToken });
    });
  }

  function element(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content) node.textContent = content;
    return node;
  }

  function showModal(payment, message, link) {
    closeModal(payment);
    var modal = element("div", "athm-modal");
    modal.setAttribute("role", "dialog");
    modal.appendChild(element("p", "athm-modal-message", message));
    if (link) {
      var anchor = element("a", "athm-modal-phone", text().phone);
      anchor.setAttribute("href", link);
      anchor.setAttribute("target", "_blank");
      modal.appendChild(anchor);
    }
    var close = element("button", "athm-modal-cancel", link ? text().cancel : text().close);
    close.setAttribute("type", "button");
    close.addEventListener("click", function () {
      if (link) cancel(payment);
      else finish(payment);
    });
    modal.appendChild(close);
    document.body.appendChild(modal);
    payment.modal = modal;
  }

  function closeModal(payment) {
    if (payment.modal && payment.modal.parentNode) payment.modal.parentNode.removeChild(payment.modal);
    payment.modal = null;
  }

  function finish(payment, callbackName) {
    payment.done = true;
    closeModal(payment);
    if (current === payment) current = null;
    var callback = callbackName ? pageCallback(callbackName) : null;
    if (callback) callback();
  }

  function expired(payment) {
    return Date.now() >= payment.deadline;
  }

  function poll(payment) {
    if (payment.done || payment.cancelling) return;
    if (expired(payment)) {
      finish(payment, "expiredATHM");
      return;
    }
    find(payment).then(
      function (data) {
        if (payment.done || payment.cancelling) return;
        var status = data.ecommerceStatus;
        if (status === "CONFIRM") {
          authorize(payment);
        } else if (status === "COMPLETED") {
          completed = data;
          finish(payment, "authorizationATHM");
        } else if (status === "CANCEL") {
          finish(payment, expired(payment) ? "expiredATHM" : "cancelATHM");
        } else {
          window.setTimeout(function () { poll(payment); }, POLL_MS);
        }
      },
      function () {
        // A lost connection or a sandbox fault: keep waiting until the deadline.
        if (!payment.done) window.setTimeout(function () { poll(payment); }, POLL_MS);
      }
    );
  }

  function authorize(payment) {
    // The browser captures, as Evertec's button does: once, with the payment's auth token.
    call("/authorization", {}, payment.authToken).then(
      function (data) {
        completed = Object.assign({}, data, { auth_token: payment.authToken });
        finish(payment, "authorizationATHM");
      },
      function () {
        if (!payment.done) window.setTimeout(function () { poll(payment); }, POLL_MS);
      }
    );
  }

  function cancel(payment) {
    var body = { ecommerceId: payment.ecommerceId, publicToken: config().publicToken };
    payment.cancelling = true;
    call("/business/cancel", body).then(
      function () {
        finish(payment, "cancelATHM");
      },
      function () {
        // Not cancelled (the sandbox is down, or it was paid meanwhile): keep waiting.
        payment.cancelling = false;
        poll(payment);
      }
    );
  }

  // Without a phoneNumber in the config, Evertec's window asks the customer for it.
  function askPhone() {
    if (current) return;
    var payment = { done: false, modal: null };
    current = payment;
    var modal = element("form", "athm-modal");
    modal.setAttribute("role", "dialog");
    var label = element("label", "athm-modal-message", text().ask + " ");
    var input = element("input", "athm-modal-phone-number");
    input.setAttribute("type", "tel");
    input.setAttribute("required", "");
    label.appendChild(input);
    modal.appendChild(label);
    var send = element("button", "athm-modal-send", text().send);
    send.setAttribute("type", "submit");
    modal.appendChild(send);
    var close = element("button", "athm-modal-cancel", text().cancel);
    close.setAttribute("type", "button");
    close.addEventListener("click", function () { finish(payment, "cancelATHM"); });
    modal.appendChild(close);
    modal.addEventListener("submit", function (event) {
      event.preventDefault();
      closeModal(payment);
      current = null;
      start(input.value);
    });
    document.body.appendChild(modal);
    payment.modal = modal;
    input.focus();
  }

  function start(typedPhone) {
    if (current) return;
    var cfg = config();
    var phoneNumber = typeof typedPhone === "string" ? typedPhone : cfg.phoneNumber;
    var timeout = Number(cfg.timeout) || 600;
    var payment = { deadline: Date.now() + timeout * 1000, done: false, modal: null };
    current = payment;
    completed = null;
    var body = {
      env: cfg.env || "production",
      publicToken: cfg.publicToken,
      timeout: timeout,
      total: cfg.total,
      subtotal: cfg.subtotal,
      tax: cfg.tax,
      metadata1: cfg.metadata1,
      metadata2: cfg.metadata2,
      items: cfg.items || [],
      phoneNumber: phoneNumber,
    };
    call("/payment", body).then(
      function (data) {
        payment.ecommerceId = data.ecommerceId;
        payment.authToken = data.auth_token;
        latest = payment;
        var digits = String(phoneNumber || "").replace(/\D/g, "");
        var link = base + "/phone/" + (digits ? digits + "/" : "");
        showModal(payment, text().open + Number(cfg.total).toFixed(2), link);
        window.setTimeout(function () { poll(payment); }, POLL_MS);
      },
      function (error) {
        showModal(payment, text().failed + error.message, null);
      }
    );
  }

  // Enough look to be recognised in a screenshot; Evertec's own is richer.
  var STYLE =
    ".athmovil-button{background:#f47920;color:#fff;border:0;border-radius:.4rem;" +
    "font:600 1rem system-ui,sans-serif;padding:.7rem 1.4rem;cursor:pointer}" +
    ".athmovil-button.btn-dark{background:#222}.athmovil-button.btn-light{background:#fff;" +
    "color:#f47920;border:1px solid #f47920}" +
    ".athm-modal{position:fixed;inset:auto 1rem 1rem 1rem;background:#fff;color:#222;" +
    "border-radius:.6rem;box-shadow:0 2px 12px #0004;padding:1rem;font:1rem system-ui," +
    "sans-serif}.athm-modal a{display:inline-block;margin:0 1rem .4rem 0;color:#f47920}" +
    ".athm-modal button{font:inherit;padding:.4rem 1rem;border-radius:.4rem;border:1px solid #999;" +
    "background:#eee}";

  function render() {
    var holder = document.getElementById("ATHMovil_Checkout_Button_payment");
    if (!holder) return;
    if (document.head) document.head.appendChild(element("style", "", STYLE));
    var button = element("button", "athmovil-button " + (config().theme || "btn"), text().button);
    button.setAttribute("type", "button");
    button.addEventListener("click", function () {
      if (config().phoneNumber) start();
      else askPhone();
    });
    holder.appendChild(button);
  }

  // The library's globals, which the page's callbacks call.
  window.authorization = function () {
    if (completed) return Promise.resolve(completed);
    return window.findPaymentATHM();
  };
  window.findPaymentATHM = function () {
    return latest ? find(latest) : Promise.reject(new Error("No payment yet"));
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
