// The org page's time charts (uPlot): the burn-down of the org budget and spend by day and
// model. Data comes from the page itself (#chart-data); figures are micro-dollars.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("chart-data").textContent);
  var usd = function (u, v) { return v == null ? "—" : "$" + (v / 1e6).toFixed(2); };
  var days = function (list) { return list.map(function (d) { return Date.parse(d + "T12:00:00Z") / 1000; }); };
  var width = function (el) { return Math.max(480, el.clientWidth - 8); };
  // Axis ticks in dollars, with as many decimals as the tick spacing needs.
  var dollars = function (u, vals, axis, space, incr) {
    var places = Math.min(6, Math.max(0, -Math.floor(Math.log10(incr / 1e6))));
    return vals.map(function (v) { return "$" + (v / 1e6).toFixed(places); });
  };
  var palette = ["#2563eb", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];
  window.budgetdCharts = {};

  var bd = data.burndown;
  var bdEl = document.getElementById("burndown-chart");
  if (bd && bdEl) {
    window.budgetdCharts.burndown = new uPlot({
      width: width(bdEl), height: 260,
      scales: { x: { time: true } },
      axes: [{}, { values: dollars, size: 80 }],
      series: [
        { label: "day", value: function (u, v) { return v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 10); } },
        { label: "remaining", stroke: "#2563eb", width: 2, value: usd },
        { label: "forecast", stroke: "#b91c1c", dash: [6, 4], width: 2, value: usd },
        { label: "limit", stroke: "#9ca3af", width: 1, value: usd }
      ]
    }, [days(bd.days), bd.remaining, bd.forecast, bd.days.map(function () { return bd.limit_micros; })], bdEl);
  }

  var daily = data.daily;
  var dEl = document.getElementById("daily-chart");
  if (dEl && daily.days.length) {
    var series = [{ label: "day", value: function (u, v) { return v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 10); } }];
    daily.models.forEach(function (m, i) {
      series.push({ label: m, stroke: palette[i % palette.length], width: 2, value: usd, points: { show: true } });
    });
    window.budgetdCharts.daily = new uPlot({
      width: width(dEl), height: 260,
      scales: { x: { time: true } },
      axes: [{}, { values: dollars, size: 80 }],
      series: series
    }, [days(daily.days)].concat(daily.values), dEl);
  }
})();
