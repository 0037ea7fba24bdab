// Template editor: keeps the preview and SMS counter in step with the text as it is typed.
// Every number shown comes from the server (/admin/templates/preview), which uses the same
// Python counter as real sends, so the page and the server never disagree.
(function () {
  "use strict";
  var form = document.getElementById("template-form");
  if (!form) return;
  var body = document.getElementById("body");
  var platform = document.getElementById("platform");
  var fixButton = document.getElementById("gsm-safe");
  var token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var url = form.getAttribute("data-preview-url");
  var locale = form.getAttribute("data-locale");
  var timer = null;
  var latest = 0;
  var gsmSafeBody = null;

  function byId(id) { return document.getElementById(id); }

  function setText(id, value) { byId(id).textContent = value; }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function showRuns(node, runs) {
    clear(node);
    runs.forEach(function (run) {
      if (run[1]) {
        var mark = document.createElement("mark");
        mark.textContent = run[0];
        node.appendChild(mark);
      } else {
        node.appendChild(document.createTextNode(run[0]));
      }
    });
  }

  function render(data) {
    var c = data.count;
    setText("count-chars", c ? c.characters : "–");
    setText("count-encoding", c ? c.encoding : "–");
    byId("count-encoding").setAttribute("data-encoding", c ? c.encoding : "");
    setText("count-segments", c ? c.segments : "–");
    setText("count-remaining", c ? c.remaining : "–");
    setText("count-rule", c ? (c.per_segment + " per SMS" + (c.segments > 1 ? " when split" : "") + "; " +
      (c.encoding === "GSM-7" ? "^ { } [ ] ~ \\ | € count as 2." : "counted in UTF-16 units.")) : "");

    var warning = byId("unicode-warning");
    var list = byId("unicode-list");
    clear(list);
    if (c && c.unicode_details.length) {
      c.unicode_details.forEach(function (d) {
        var li = document.createElement("li");
        var code = document.createElement("code");
        code.textContent = d.char;
        li.appendChild(code);
        var text = " " + d.codepoint + " " + d.name;
        if (d.replacement !== null) text += " → " + (d.replacement === "" ? "(removed)" : d.replacement);
        li.appendChild(document.createTextNode(text));
        list.appendChild(li);
      });
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }

    var note = byId("minimum-note");
    if (data.minimum) {
      setText("minimum-vars", data.variables_used.join(", "));
      setText("minimum-chars", data.minimum.characters);
      note.hidden = false;
    } else {
      note.hidden = true;
    }

    var problems = byId("problems");
    clear(problems);
    data.problems.forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = p;
      problems.appendChild(li);
    });
    problems.hidden = data.problems.length === 0;

    var preview = byId("preview-text");
    if (c) {
      showRuns(preview, c.runs);
    } else {
      clear(preview);
      var span = document.createElement("span");
      span.className = "muted";
      span.textContent = data.error || "";
      preview.appendChild(span);
    }

    gsmSafeBody = data.gsm_safe_body;
    fixButton.disabled = gsmSafeBody === null;
    form.setAttribute("data-state", "ready");
  }

  function update() {
    var request = ++latest;
    form.setAttribute("data-state", "loading");
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": token },
      body: JSON.stringify({ body: body.value, platform: platform.value, locale: locale })
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (data) {
      // Answers can arrive out of order; only the newest one describes the text on screen.
      if (request === latest) render(data);
    }).catch(function () {
      if (request === latest) form.setAttribute("data-state", "error");
    });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(update, 250);
  }

  body.addEventListener("input", schedule);
  platform.addEventListener("change", update);
  fixButton.addEventListener("click", function () {
    if (gsmSafeBody === null) return;
    body.value = gsmSafeBody;
    update();
  });
  // Make the button work at once, before the first keystroke.
  update();
})();
