/* dissect report site: charts from embedded JSON, the unit grid's sort/filter/search, and
 * arrow-key paging between units. No network requests; works from file://. */
(function () {
  "use strict";

  // ---- charts: <div class="chart" data-figure="ID"> + <script type="application/json" id="ID">
  function initCharts() {
    if (!window.Plotly) return;
    var nodes = document.querySelectorAll(".chart[data-figure]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var src = document.getElementById(el.getAttribute("data-figure"));
      if (!src) continue;
      var fig;
      try { fig = JSON.parse(src.textContent); } catch (e) { continue; }
      var fallback = el.querySelector(".chart-fallback");
      if (fallback) fallback.remove();
      window.Plotly.newPlot(el, fig.data, fig.layout, {
        displaylogo: false, responsive: true,
        modeBarButtonsToRemove: ["select2d", "lasso2d"]
      });
    }
  }

  // ---- unit grid
  function initGrid() {
    var grid = document.getElementById("unit-grid");
    var form = document.getElementById("grid-controls");
    if (!grid || !form) return;
    var empty = document.getElementById("grid-empty");
    var count = form.querySelector(".count");
    var items = Array.prototype.map.call(grid.children, function (li) {
      return {
        el: li,
        unit: Number(li.getAttribute("data-unit")),
        iou: Number(li.getAttribute("data-iou")),
        label: li.getAttribute("data-label").toLowerCase(),
        cat: li.getAttribute("data-cat"),
        det: li.getAttribute("data-det") === "1",
        sat: li.getAttribute("data-sat") === "1",
        search: li.getAttribute("data-search"),
        dead: li.classList.contains("dead")
      };
    });
    var total = items.length;
    var sorters = {
      unit: function (a, b) { return a.unit - b.unit; },
      iou: function (a, b) { return (b.iou - a.iou) || (a.unit - b.unit); },
      label: function (a, b) {
        if (a.dead !== b.dead) return a.dead ? 1 : -1;
        return a.label < b.label ? -1 : a.label > b.label ? 1 : a.unit - b.unit;
      }
    };
    var currentSort = "unit";

    function state() {
      return {
        sort: form.elements.sort.value,
        cat: form.elements.cat.value,
        det: form.elements.det.checked,
        sat: !!(form.elements.sat && form.elements.sat.checked),
        q: form.elements.q.value.trim().toLowerCase()
      };
    }

    function apply(writeHash) {
      var s = state();
      if (s.sort !== currentSort) {
        var sorted = items.slice().sort(sorters[s.sort] || sorters.unit);
        var frag = document.createDocumentFragment();
        for (var i = 0; i < sorted.length; i++) frag.appendChild(sorted[i].el);
        grid.appendChild(frag);
        currentSort = s.sort;
      }
      var terms = s.q ? s.q.split(/\s+/) : [];
      var shown = 0;
      for (var j = 0; j < items.length; j++) {
        var it = items[j];
        var ok = (!s.cat || it.cat === s.cat) && (!s.det || it.det) && (!s.sat || it.sat);
        for (var k = 0; ok && k < terms.length; k++) ok = it.search.indexOf(terms[k]) !== -1;
        if (it.el.hidden === ok) it.el.hidden = !ok;
        if (ok) shown++;
      }
      count.textContent = shown === total ? total + " units" : "showing " + shown + " of " + total + " units";
      if (empty) empty.hidden = shown !== 0;
      if (writeHash) {
        var p = new URLSearchParams();
        if (s.sort !== "unit") p.set("sort", s.sort);
        if (s.cat) p.set("cat", s.cat);
        if (s.det) p.set("det", "1");
        if (s.sat) p.set("sat", "1");
        if (s.q) p.set("q", form.elements.q.value.trim());
        var h = p.toString();
        var url = location.pathname + location.search + (h ? "#" + h : "");
        try { history.replaceState(null, "", url); } catch (e) { /* file:// in some browsers */ }
      }
    }

    function readHash() {
      var p = new URLSearchParams(location.hash.replace(/^#/, ""));
      var sort = p.get("sort");
      form.elements.sort.value = sorters[sort] ? sort : "unit";
      var cat = p.get("cat") || "";
      var known = Array.prototype.some.call(form.elements.cat.options, function (o) { return o.value === cat; });
      form.elements.cat.value = known ? cat : "";
      form.elements.det.checked = p.get("det") === "1";
      if (form.elements.sat) form.elements.sat.checked = p.get("sat") === "1";
      form.elements.q.value = p.get("q") || "";
    }

    var timer = null;
    form.addEventListener("submit", function (e) { e.preventDefault(); });
    form.addEventListener("change", function () { apply(true); });
    form.addEventListener("input", function (e) {
      if (e.target.name !== "q") return;
      clearTimeout(timer);
      timer = setTimeout(function () { apply(true); }, 120);
    });
    form.addEventListener("reset", function () { setTimeout(function () { apply(true); }, 0); });
    window.addEventListener("hashchange", function () { readHash(); apply(false); });
    readHash();
    form.hidden = false;
    apply(false);
    // A deep link to one unit (index.html#unit-12): bring its card into view once laid out.
    var target = /^#unit-\d+$/.test(location.hash) && document.getElementById(location.hash.slice(1));
    if (target && grid.contains(target)) target.scrollIntoView({block: "center"});
  }

  // ---- unit pages: ← / → follow rel=prev / rel=next
  function initPager() {
    var prev = document.querySelector("a[rel=prev]");
    var next = document.querySelector("a[rel=next]");
    if (!prev && !next) return;
    document.addEventListener("keydown", function (e) {
      if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
      var t = e.target;
      if (t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) return;
      if (e.key === "ArrowLeft" && prev) location.href = prev.href;
      else if (e.key === "ArrowRight" && next) location.href = next.href;
    });
  }

  // ---- table.sortable: a click (or Enter) on a column head sorts the rows by it, again reverses
  function initSortable() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      var heads = table.tHead ? table.tHead.rows[0].cells : [];
      var body = table.tBodies[0];
      Array.prototype.forEach.call(heads, function (th, col) {
        th.tabIndex = 0;
        th.classList.add("sort-head");
        function sort() {
          var asc = th.getAttribute("aria-sort") !== "ascending";
          Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", asc ? "ascending" : "descending");
          var rows = Array.prototype.slice.call(body.rows);
          var key = function (row) {
            var cell = row.cells[col];
            var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
            var n = Number(v.replace(/,/g, ""));
            return v !== "" && !isNaN(n) ? n : v.toLowerCase();
          };
          rows.sort(function (a, b) {
            var x = key(a), y = key(b);
            var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
            return asc ? c : -c;
          });
          rows.forEach(function (r) { body.appendChild(r); });
        }
        th.addEventListener("click", sort);
        th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
      });
    });
  }

  function init() { initCharts(); initGrid(); initPager(); initSortable(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
