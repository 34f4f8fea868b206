// batchd status page: the API token, live updates, the action buttons and
// relative ages. Plain JavaScript, no build step; loaded under a CSP that
// allows scripts from this origin only.
//
// Token: kept in sessionStorage (this tab only) and sent as an
// Authorization header, never in a URL. Live updates: /ui/events read with
// fetch() (EventSource cannot send the header), parsed here.
(function () {
  'use strict';

  var TOKEN_KEY = 'batchd.apiToken';
  var MAX_LIVE_ROWS = 200; // rows inserted live before "reload" is offered
  var body = document.body;
  var tokenRequired = body.dataset.tokenRequired === 'true';
  var main = document.getElementById('main');
  var live = document.getElementById('live');
  var announcer = document.getElementById('announce');
  var forgetButton = document.getElementById('forget-token');

  var stream = null; // AbortController of the open event stream
  var retryDelay = 1000;
  var reloadTimer = 0;
  var inserted = 0;
  var actionMessage = null; // {text, failed}: kept across content reloads
  var timersStarted = false;

  // --- token -------------------------------------------------------------

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; }
  }
  function setToken(t) {
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage disabled */ }
  }
  function clearToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
  }
  function headers(extra) {
    var h = {};
    for (var k in extra) { h[k] = extra[k]; }
    var t = getToken();
    if (tokenRequired && t) { h.Authorization = 'Bearer ' + t; }
    return h;
  }

  // showShell shows the shell's token form, or (loading) only its
  // "Loading…" line. It returns false when the shell is not on the page.
  function showShell(loading) {
    var shell = main.querySelector('[data-page="shell"]');
    if (!shell) { return false; }
    Array.prototype.forEach.call(shell.children, function (el) {
      if (el.id === 'token-error') { return; }
      el.hidden = loading !== el.classList.contains('shell-loading');
    });
    if (loading) { main.setAttribute('aria-busy', 'true'); } else { main.removeAttribute('aria-busy'); }
    return true;
  }

  // The token was refused (or forgotten): back to the form.
  function askForToken(message) {
    clearToken();
    stopStream();
    setLive('off', 'Live updates off');
    if (forgetButton) { forgetButton.hidden = true; }
    if (!showShell(false)) {
      // Not on the shell (content was loaded): load the shell again.
      location.reload();
      return;
    }
    var err = document.getElementById('token-error');
    if (err && message) { err.textContent = message; err.hidden = false; }
    var input = document.getElementById('token-input');
    if (input) { input.focus(); }
  }

  // --- content -------------------------------------------------------------

  function eventsURL() {
    if (location.pathname !== '/') { return '/ui/events'; }
    var q = new URLSearchParams(location.search);
    var out = new URLSearchParams();
    ['pipeline', 'state'].forEach(function (k) { if (q.get(k)) { out.set(k, q.get(k)); } });
    var s = out.toString();
    return '/ui/events' + (s ? '?' + s : '');
  }

  function loadContent() {
    return fetch(location.pathname + location.search, {
      headers: headers({ 'X-Batchd-Fragment': '1' }),
      cache: 'no-store',
      credentials: 'same-origin'
    }).then(function (res) {
      if (res.status === 401 && tokenRequired) {
        askForToken('The token was not accepted. Enter it again.');
        return;
      }
      return res.text().then(swapMain);
    }).catch(function () { /* offline: the stream's retry brings it back */ });
  }

  // swapMain replaces the content of <main>, keeping what the user typed,
  // which <details> are open, and where the focus is.
  function swapMain(html) {
    var active = document.activeElement;
    var activeId = active && main.contains(active) && active !== main ? active.id : '';
    var values = {};
    main.querySelectorAll('input[id], select[id], textarea[id]').forEach(function (el) {
      if (el.type !== 'password' && el.type !== 'hidden') { values[el.id] = el.value; }
    });
    var open = {};
    main.querySelectorAll('details').forEach(function (d, i) { open[i] = d.open; });
    var wasShell = !!main.querySelector('[data-page="shell"]');

    main.innerHTML = html;

    Object.keys(values).forEach(function (id) {
      var el = document.getElementById(id);
      if (el && main.contains(el)) { el.value = values[id]; }
    });
    main.querySelectorAll('details').forEach(function (d, i) { if (open[i]) { d.open = true; } });
    var page = main.querySelector('.page');
    if (page && page.dataset.title) { document.title = page.dataset.title; }
    inserted = 0;
    showActionMessage();
    if (activeId) {
      var el = document.getElementById(activeId);
      if (el) { el.focus(); }
    } else if (wasShell) {
      main.focus();
    }
    if (forgetButton) { forgetButton.hidden = !getToken(); }
    updateAges();
  }

  function scheduleReload(delay) {
    if (reloadTimer) { return; }
    reloadTimer = setTimeout(function () { reloadTimer = 0; loadContent(); }, delay);
  }

  // --- live stream -----------------------------------------------------------

  function setLive(state, text) {
    if (!live) { return; }
    live.dataset.state = state;
    live.querySelector('.live-text').textContent = text;
  }

  function stopStream() {
    if (stream) { stream.abort(); stream = null; }
  }

  function connect() {
    stopStream();
    var ctrl = new AbortController();
    stream = ctrl;
    setLive('retry', 'Connecting…');
    fetch(eventsURL(), {
      headers: headers({ Accept: 'text/event-stream' }),
      cache: 'no-store',
      credentials: 'same-origin',
      signal: ctrl.signal
    }).then(function (res) {
      if (res.status === 401 && tokenRequired) {
        askForToken('The token was not accepted. Enter it again.');
        return 'auth';
      }
      if (!res.ok || !res.body) { throw new Error('HTTP ' + res.status); }
      return read(res.body.getReader(), ctrl);
    }).catch(function () { /* retried below */ }).then(function (outcome) {
      if (ctrl.signal.aborted || outcome === 'auth') { return; }
      if (main.querySelector('[data-page="shell"]') && getToken()) { loadContent(); }
      setLive('retry', 'Reconnecting…');
      setTimeout(function () { if (stream === ctrl) { connect(); } }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    });
  }

  function read(reader, ctrl) {
    var decoder = new TextDecoder();
    var buf = '';
    function pump() {
      return reader.read().then(function (r) {
        if (r.done || ctrl.signal.aborted) { return; }
        buf += decoder.decode(r.value, { stream: true });
        var i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          var block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          dispatch(block);
        }
        return pump();
      });
    }
    return pump();
  }

  function dispatch(block) {
    var type = 'message';
    var data = [];
    block.split('\n').forEach(function (line) {
      if (line === '' || line.charAt(0) === ':') { return; }
      var c = line.indexOf(':');
      var field = c < 0 ? line : line.slice(0, c);
      var value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'event') { type = value; } else if (field === 'data') { data.push(value); }
    });
    var payload = {};
    try { payload = JSON.parse(data.join('\n') || '{}'); } catch (e) { return; }
    if (type === 'hello') {
      retryDelay = 1000;
      setLive('on', 'Live');
      // Anything that changed between this page and the subscription.
      loadContent();
    } else if (type === 'resync') {
      loadContent();
    } else if (type === 'run') {
      onRun(payload);
    }
  }

  function onRun(ev) {
    var runsPage = main.querySelector('.runs-page');
    if (runsPage) { updateRow(runsPage, ev); return; }
    var runPage = main.querySelector('.run-page');
    if (runPage) {
      if (runPage.dataset.runId === ev.id) { scheduleReload(250); }
      return;
    }
    if (main.querySelector('.pipelines-page, .endpoints-page')) { scheduleReload(3000); }
  }

  function rowFromHTML(html) {
    var t = document.createElement('template');
    t.innerHTML = html;
    return t.content.querySelector('tr');
  }

  function updateRow(page, ev) {
    var tbody = document.getElementById('run-rows');
    if (!tbody) { return; }
    var existing = null;
    tbody.querySelectorAll('tr[data-run-id]').forEach(function (tr) {
      if (tr.dataset.runId === ev.id) { existing = tr; }
    });
    if (ev.removed || (existing && !ev.match)) {
      if (existing) { existing.remove(); }
      return;
    }
    if (!ev.row) { return; }
    var row = rowFromHTML(ev.row);
    if (!row) { return; }
    if (existing) {
      existing.replaceWith(row);
      return;
    }
    if (!ev.match || page.dataset.firstPage !== 'true') { return; }
    var top = tbody.querySelector('tr[data-run-id]');
    if (top && Number(top.dataset.created) > ev.created) { return; } // an older run: not on this view
    if (inserted >= MAX_LIVE_ROWS) {
      var note = document.getElementById('more-note');
      if (note) { note.hidden = false; }
      return;
    }
    inserted++;
    var empty = tbody.querySelector('tr.empty');
    if (empty) { empty.remove(); }
    row.classList.add('fresh');
    tbody.insertBefore(row, tbody.firstChild);
    announce('New run ' + ev.id.slice(0, 12) + ' of pipeline ' + ev.pipeline + ': ' + ev.state.replace('_', ' ') + '.');
  }

  function announce(text) {
    if (!announcer) { return; }
    announcer.textContent = '';
    setTimeout(function () { announcer.textContent = text; }, 50);
  }

  // --- ages ----------------------------------------------------------------

  function ageText(ms) {
    var s = Math.floor(ms / 1000);
    if (s < 5) { return 'just now'; }
    if (s < 60) { return s + 's ago'; }
    if (s < 3600) { return Math.floor(s / 60) + 'm ago'; }
    if (s < 48 * 3600) { return Math.floor(s / 3600) + 'h ago'; }
    return Math.floor(s / 86400) + 'd ago';
  }

  function updateAges() {
    var now = Date.now();
    main.querySelectorAll('time[data-age]').forEach(function (t) {
      var at = Date.parse(t.getAttribute('datetime'));
      if (!isNaN(at)) { t.textContent = ageText(now - at); }
    });
  }

  // --- actions -------------------------------------------------------------

  function showActionMessage() {
    var out = document.getElementById('action-result');
    if (!out || !actionMessage) { return; }
    out.textContent = actionMessage.text;
    out.classList.toggle('failed', actionMessage.failed);
  }

  function setActionMessage(text, failed) {
    actionMessage = { text: text, failed: failed };
    showActionMessage();
  }

  var labels = { cancel: 'Cancel', retry: 'Retry', resolve: 'Resolve' };

  function submitAction(form, action) {
    var section = form.closest('[data-actions]');
    if (!section || !labels[action]) { return; }
    var body = {};
    var reason = form.querySelector('[name="reason"]');
    if (reason && reason.value.trim()) { body.reason = reason.value.trim(); }
    if (action === 'resolve') {
      var state = form.querySelector('[name="state"]').value;
      var job = form.querySelector('[name="job"]').value.trim();
      if (!state && !job) {
        setActionMessage('Choose an outcome, or give the name of the job to adopt.', true);
        form.querySelector('[name="state"]').focus();
        return;
      }
      if (state) { body.state = state; } else { body.job = job; }
    }
    if (action === 'cancel' && !window.confirm('Cancel this run? Its job is canceled in Azure ML.')) { return; }
    var buttons = form.querySelectorAll('button');
    buttons.forEach(function (b) { b.disabled = true; });
    setActionMessage(labels[action] + ': sending…', false);
    fetch(section.dataset.actions + '/' + action, {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body),
      cache: 'no-store',
      credentials: 'same-origin'
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (p) {
        if (res.status === 401 && tokenRequired) {
          askForToken('The token was not accepted. Enter it again.');
          return;
        }
        if (!res.ok) {
          var msg = p && p.error && p.error.message ? p.error.message : 'HTTP ' + res.status;
          setActionMessage(labels[action] + ' refused: ' + msg, true);
          return;
        }
        var state = p && p.state ? String(p.state).replace('_', ' ') : 'updated';
        setActionMessage(res.status === 202
          ? labels[action] + ' requested; the run is ' + state + ' now. This page follows it.'
          : labels[action] + ' done: the run is ' + state + '.', false);
        if (reason) { reason.value = ''; }
        loadContent();
      });
    }).catch(function (e) {
      setActionMessage(labels[action] + ' failed: ' + e.message, true);
    }).then(function () {
      buttons.forEach(function (b) { b.disabled = false; });
    });
  }

  main.addEventListener('submit', function (e) {
    var form = e.target;
    if (form.id === 'token-form') {
      e.preventDefault();
      var input = document.getElementById('token-input');
      var t = input.value.trim();
      input.value = '';
      if (!t) { return; }
      setToken(t);
      start();
      return;
    }
    if (form.id === 'run-action' || form.id === 'run-resolve') {
      e.preventDefault();
      var submitter = e.submitter || form.querySelector('button[type="submit"]');
      submitAction(form, submitter ? submitter.value : '');
    }
  });

  if (forgetButton) {
    forgetButton.addEventListener('click', function () {
      clearToken();
      stopStream();
      location.reload();
    });
  }

  // --- start ----------------------------------------------------------------

  function start() {
    if (tokenRequired && !getToken()) {
      askForToken('');
      return;
    }
    showShell(true);
    if (forgetButton) { forgetButton.hidden = !getToken(); }
    connect(); // its hello loads the content
    if (timersStarted) { return; }
    timersStarted = true;
    setInterval(updateAges, 15000);
    if (location.pathname === '/endpoints') {
      // The admission state changes without any ledger change.
      setInterval(function () { if (!document.hidden && stream) { loadContent(); } }, 10000);
    }
  }

  // Content replaced the shell: no longer busy.
  new MutationObserver(function () { main.removeAttribute('aria-busy'); }).observe(main, { childList: true });

  start();
}());
