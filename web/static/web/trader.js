/* Trader pages: account switcher auto-submit, the equity chart (uPlot) and copy-to-clipboard.
   No inline handlers anywhere (CSP-friendly); every feature degrades to plain HTML. */
(function () {
  "use strict";

  function autosubmit() {
    document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
      form.querySelectorAll("[data-js-hide]").forEach(function (el) { el.hidden = true; });
      form.querySelectorAll("select").forEach(function (select) {
        select.addEventListener("change", function () {
          if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
        });
      });
    });
  }

  function equityChart() {
    var el = document.getElementById("equity-chart");
    var dataEl = document.getElementById("equity-data");
    if (!el || !dataEl || typeof window.uPlot === "undefined") { return; }
    var data = JSON.parse(dataEl.textContent);
    if (!data.t || data.t.length < 2) { return; }
    // Money arrives as decimal strings; numbers are used only to draw.
    var ys = data.v.map(Number);
    var css = getComputedStyle(document.documentElement);
    var stroke = (css.getPropertyValue("--primary") || "").trim() || "#2f5bea";
    var full = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });
    var axis = new Intl.NumberFormat(undefined, {
      style: "currency", currency: "USD", notation: "compact", maximumFractionDigits: 2
    });
    var height = function () { return el.clientWidth < 560 ? 180 : 240; };
    var opts = {
      width: el.clientWidth,
      height: height(),
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true } },
      series: [
        {},
        {
          label: "Equity",
          stroke: stroke,
          width: 2,
          fill: "rgba(47, 91, 234, 0.08)",
          value: function (u, v) { return v == null ? "—" : full.format(v); }
        }
      ],
      axes: [
        { stroke: "#5b6270", grid: { stroke: "#eceef2" } },
        {
          stroke: "#5b6270",
          grid: { stroke: "#eceef2" },
          size: 64,
          values: function (u, vals) { return vals.map(function (v) { return axis.format(v); }); }
        }
      ]
    };
    var plot = new window.uPlot(opts, [data.t, ys], el);
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        plot.setSize({ width: el.clientWidth, height: height() });
      }).observe(el);
    }
  }

  function copyButtons() {
    if (!navigator.clipboard) { return; }
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      var input = document.getElementById(button.getAttribute("data-copy-target"));
      if (!input) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(input.value).then(function () {
          button.textContent = "Copied";
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    autosubmit();
    equityChart();
    copyButtons();
  });
})();
