// The Web UI's own script: tabs of the execution page, and the flow editor (line numbers,
// validation as you type through the API's validate route, errors marked at their line, save).
(function () {
  "use strict";

  // Tabs: a button with data-tab-to sets data-tab on its container; CSS shows the matching section.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-tab-to]");
    if (!button) return;
    var container = button.closest("[data-tab]");
    if (container) container.setAttribute("data-tab", button.getAttribute("data-tab-to"));
  });

  function api(method, path, body) {
    return fetch("/api/v1/main" + path, {
      method: method,
      headers: { "Content-Type": "application/x-yaml", "X-Kestra-UI": "1" },
      credentials: "same-origin",
      body: body,
    }).then(function (response) {
      if (response.status === 401) {
        window.location = "/ui/login?next=" + encodeURIComponent(window.location.pathname);
        throw new Error("session ended");
      }
      return response.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = { message: text }; }
        return { status: response.status, json: json };
      });
    });
  }

  function setupEditor(root) {
    var source = root.querySelector("#source");
    var gutter = root.querySelector("#gutter");
    var problems = document.getElementById("problems");
    var status = document.getElementById("editor-status");
    var save = document.getElementById("save");
    var errorsByLine = {};
    var timer = null;
    var generation = 0;

    function renderGutter() {
      var count = source.value.split("\n").length;
      var html = "";
      for (var i = 1; i <= count; i++) {
        var cls = errorsByLine[i] ? "ln err" : "ln";
        var title = errorsByLine[i] ? ' title="' + escapeHtml(errorsByLine[i].join("\n")) + '"' : "";
        html += '<div class="' + cls + '" data-line="' + i + '"' + title + ">" + i + "</div>";
      }
      gutter.innerHTML = html;
      gutter.scrollTop = source.scrollTop;
    }

    function escapeHtml(text) {
      return String(text).replace(/[&<>"']/g, function (c) {
        return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
      });
    }

    function showErrors(errors, heading) {
      errorsByLine = {};
      if (!errors.length) {
        problems.className = "card problems ok";
        problems.innerHTML = '<p class="ok-text">' + escapeHtml(heading || "Valid flow.") + "</p>";
      } else {
        problems.className = "card problems bad";
        var html = "<ul>";
        errors.forEach(function (e) {
          var line = e.line || 0;
          if (line) (errorsByLine[line] = errorsByLine[line] || []).push(e.message);
          html += '<li class="problem" data-line="' + line + '"><span class="where">line ' + line +
            (e.column ? ", column " + e.column : "") + "</span> " +
            (e.path ? '<span class="path">' + escapeHtml(e.path) + "</span> " : "") +
            escapeHtml(e.message || "") + "</li>";
        });
        problems.innerHTML = html + "</ul>";
      }
      renderGutter();
    }

    function validate() {
      var mine = ++generation;
      status.textContent = "validating…";
      api("POST", "/flows/validate", source.value).then(function (answer) {
        if (mine !== generation) return;
        var errors = [];
        (answer.json || []).forEach(function (report) {
          (report.errors || []).forEach(function (e) { errors.push(e); });
          if (!(report.errors || []).length && report.constraints) errors.push({ message: report.constraints });
        });
        if (answer.status !== 200) errors.push({ message: (answer.json && answer.json.message) || "validation failed" });
        status.textContent = errors.length ? errors.length + " problem(s)" : "valid";
        showErrors(errors);
      }).catch(function () { status.textContent = ""; });
    }

    function schedule() {
      renderGutter();
      clearTimeout(timer);
      timer = setTimeout(validate, 300);
    }

    function doSave() {
      var mode = root.getAttribute("data-mode");
      var path = mode === "update"
        ? "/flows/" + encodeURIComponent(root.getAttribute("data-namespace")) + "/" + encodeURIComponent(root.getAttribute("data-id"))
        : "/flows";
      status.textContent = "saving…";
      api(mode === "update" ? "PUT" : "POST", path, source.value).then(function (answer) {
        if (answer.status === 200) {
          status.textContent = "saved, revision " + answer.json.revision;
          window.location = "/ui/flows/" + encodeURIComponent(answer.json.namespace) + "/" + encodeURIComponent(answer.json.id);
          return;
        }
        var errors = (answer.json && answer.json._embedded && answer.json._embedded.errors) || [];
        if (!errors.length) errors = [{ message: (answer.json && answer.json.message) || "save failed (" + answer.status + ")" }];
        status.textContent = "not saved";
        showErrors(errors);
      });
    }

    source.addEventListener("input", schedule);
    source.addEventListener("scroll", function () { gutter.scrollTop = source.scrollTop; });
    source.addEventListener("keydown", function (event) {
      if (event.key === "Tab") {
        event.preventDefault();
        var start = source.selectionStart;
        source.setRangeText("  ", start, source.selectionEnd, "end");
        schedule();
      } else if ((event.ctrlKey || event.metaKey) && event.key === "s") {
        event.preventDefault();
        doSave();
      }
    });
    problems.addEventListener("click", function (event) {
      var item = event.target.closest("[data-line]");
      var line = item && parseInt(item.getAttribute("data-line"), 10);
      if (!line) return;
      var lines = source.value.split("\n");
      var offset = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
      source.focus();
      source.setSelectionRange(offset, offset + (lines[line - 1] || "").length);
    });
    save.addEventListener("click", doSave);
    renderGutter();
    validate();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var editor = document.getElementById("editor");
    if (editor) setupEditor(editor);
  });
})();
