/* Market page behaviour: the price chart (uPlot) and the ticket's local-time expiry.
   Everything else (live book, preview, submit) is htmx driven by attributes. */
(function () {
  "use strict";

  function pad(n) { return String(n).padStart(2, "0"); }

  function localInputValue(date) {
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      "T" + pad(date.getHours()) + ":" + pad(date.getMinutes());
  }

  // The server reads the datetime-local value with the browser's offset from UTC.
  function initTicket(root) {
    root.querySelectorAll(".js-tz-offset").forEach(function (input) {
      input.value = String(new Date().getTimezoneOffset());
    });
    root.querySelectorAll(".js-expiry[data-server-default]").forEach(function (input) {
      input.value = localInputValue(new Date(Date.now() + 24 * 3600 * 1000));
      input.removeAttribute("data-server-default");
    });
  }

  // The submit button names the outcome: "Buy Yes", "Sell No".
  function labelSubmit(form) {
    var label = form.querySelector(".js-outcome-label");
    var picked = form.querySelector('input[name="token"]:checked');
    if (label) { label.textContent = picked ? picked.dataset.outcome : ""; }
  }

  function initSubmitLabel(root) {
    var form = root.id === "ticket-form" ? root : root.querySelector("#ticket-form");
    if (!form) { return; }
    labelSubmit(form);
    form.addEventListener("change", function () { labelSubmit(form); });
  }

  var chart = null;

  function chartWidth(box) { return Math.max(box.clientWidth, 240); }

  function drawChart(box, data) {
    box.textContent = "";
    if (!data.t || data.t.length < 2) {
      var note = document.createElement("p");
      note.className = "muted chart-note";
      note.textContent = "No price history for this range yet.";
      box.appendChild(note);
      chart = null;
      return;
    }
    var opts = {
      width: chartWidth(box),
      height: box.clientWidth < 500 ? 200 : 260,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { y: { range: function (u, min, max) {
        var pad = Math.max((max - min) * 0.15, 0.02);
        return [Math.max(0, min - pad), Math.min(1, max + pad)];
      } } },
      axes: [
        { stroke: "#5b6270", grid: { stroke: "#eceef2" } },
        { stroke: "#5b6270", grid: { stroke: "#eceef2" }, size: 52,
          values: function (u, ticks) { return ticks.map(function (v) { return Math.round(v * 100) + "¢"; }); } }
      ],
      series: [{}, { label: data.outcome, stroke: "#2f5bea", width: 2, fill: "rgba(47,91,234,0.08)" }]
    };
    chart = new window.uPlot(opts, [data.t, data.p], box);
  }

  function loadChart(box, interval) {
    var url = box.dataset.url + "?interval=" + encodeURIComponent(interval) +
      (box.dataset.token ? "&token=" + encodeURIComponent(box.dataset.token) : "");
    fetch(url, { headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) { drawChart(box, data); box.dataset.loaded = interval; })
      .catch(function () {
        box.innerHTML = '<p class="muted chart-note">Price history is unavailable right now.</p>';
        box.dataset.loaded = "error";
      });
  }

  function initChart() {
    var box = document.getElementById("price-chart");
    if (!box || !window.uPlot) { return; }
    loadChart(box, "1d");
    document.querySelectorAll(".chart-range").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll(".chart-range").forEach(function (b) { b.classList.remove("is-active"); });
        button.classList.add("is-active");
        loadChart(box, button.dataset.interval);
      });
    });
    window.addEventListener("resize", function () {
      if (chart) { chart.setSize({ width: chartWidth(box), height: chart.height }); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initChart();
    initTicket(document);
    initSubmitLabel(document);
    if (window.htmx) {
      window.htmx.onLoad(function (el) { initTicket(el); initSubmitLabel(el); });
    }
  });
})();
