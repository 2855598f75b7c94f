// The three callbacks Evertec's athmovil_base.js calls (authorizationATHM, cancelATHM,
// expiredATHM). Each posts what the library says about the payment (ecommerceId, auth_token)
// with the order the server signed to athm_sync's view, then goes where the answer says: the
// waiting page. The amount is never posted: the server tracks the payment against its own.
// The config and the signed order come from the page's JSON (json_script), never from code.
(function () {
  "use strict";
  var read = function (id) {
    return JSON.parse(document.getElementById(id).textContent);
  };
  var callback = read("athm-checkout-callback");
  window.ATHM_Checkout = read("athm-checkout-config");
  var busy = false;

  // The library's own globals; they may be functions or let/const bindings, so by name.
  function library(name) {
    if (name === "authorization" && typeof authorization === "function") {
      return authorization; // eslint-disable-line no-undef
    }
    if (name === "findPaymentATHM" && typeof findPaymentATHM === "function") {
      return findPaymentATHM; // eslint-disable-line no-undef
    }
    return null;
  }

  // What a library answer says about the payment: {data: {...}} or the record itself.
  function details(answer) {
    var data = answer && typeof answer === "object" ? answer : {};
    if (data.data && typeof data.data === "object") {
      data = data.data;
    }
    return {
      ecommerceId: String(data.ecommerceId || ""),
      auth_token: String(data.auth_token || data.authToken || ""),
    };
  }

  async function ask(name) {
    var call = library(name);
    if (!call) {
      return details(null);
    }
    try {
      return details(await call());
    } catch (error) {
      return details(null);
    }
  }

  function showError(message) {
    var shown = document.getElementById("athm-button-error");
    if (shown) {
      shown.textContent = message;
      shown.hidden = false;
    }
  }

  async function report(event, found) {
    if (busy) {
      return; // one post per payment: the library may call back twice
    }
    busy = true;
    var body = new URLSearchParams();
    body.set("event", event);
    body.set("signed", callback.signed);
    body.set("ecommerceId", found.ecommerceId);
    body.set("auth_token", found.auth_token);
    var response;
    try {
      response = await window.fetch(callback.url, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": callback.csrf_token },
        body: body,
      });
    } catch (error) {
      busy = false;
      showError(callback.offline_message);
      return;
    }
    var answer = {};
    try {
      answer = await response.json();
    } catch (error) {
      answer = {};
    }
    if (response.ok && answer.next) {
      window.location.assign(answer.next);
    } else if (response.ok) {
      window.location.reload(); // closed before a payment was made: the shop's page again
    } else {
      busy = false;
      showError(answer.error || callback.offline_message);
    }
  }

  window.authorizationATHM = async function () {
    var found = await ask("authorization");
    if (!found.ecommerceId) {
      // authorization() failed: findPayment still names it, and the server captures it.
      var again = await ask("findPaymentATHM");
      found = { ecommerceId: again.ecommerceId, auth_token: found.auth_token || again.auth_token };
    }
    await report("authorization", found);
  };
  window.cancelATHM = async function () {
    await report("cancel", await ask("findPaymentATHM"));
  };
  window.expiredATHM = async function () {
    await report("expired", await ask("findPaymentATHM"));
  };
})();
