// Package statuspage serves batchd's status page: the runs table (live),
// a run's detail with its decision record and timeline, the pipelines and
// the endpoints. It is server-rendered html/template with one small plain
// JavaScript file and one stylesheet, embedded with go:embed; nothing is
// fetched from anywhere but the daemon itself.
//
// # Paths
//
//	GET /                  runs, newest first (?pipeline=&state=&limit=&cursor=)
//	GET /runs/{id}         one run: decision, timeline, request, errors, actions
//	GET /pipelines         trigger, next cron fires, last run, counts of the last 24 h
//	GET /endpoints         running jobs vs max_running_jobs, 429 pause, poll budget
//	GET /ui/events         server-sent events: one "run" event per ledger change
//	GET /ui/static/{file}  app.js, app.css, favicon.svg (no run data; never behind the token)
//
// The action buttons (cancel, retry, resolve) call the orchestrator's JSON API
// (POST /api/v1/runs/{id}/{cancel,retry,resolve}) with fetch; the page has no
// write path of its own.
//
// # Authentication
//
// With Options.Token set, nothing that carries run data is served without
// "Authorization: Bearer <token>". A browser asks for a page and gets the
// shell: the layout, the navigation and a token form, no data. The script keeps
// the token in sessionStorage (this tab only, gone when it closes) and fetches
// the page's content again as a fragment (header X-Batchd-Fragment: 1) with
// the Authorization header, and swaps it into <main>. Every link is an
// ordinary link: each navigation loads the shell and then the fragment, so the
// token never travels in a URL, a form post or a cookie, and never appears in
// any HTML the server writes. A request with a wrong token gets 401.
//
// The live stream needs the token too. EventSource cannot send headers, and a
// token in its URL would land in access logs, proxies and the browser's
// history, so the script reads /ui/events with fetch() and parses the
// text/event-stream itself; the same code path is used with and without a
// token. (A signed short-lived ticket in the URL was the alternative; it needs
// server state or a key for no gain over fetch streaming, which every current
// browser supports.)
//
// Without a token (the daemon refuses that unless it listens on loopback)
// the server renders complete pages, and the script only adds live updates,
// relative ages and the action buttons.
//
// # Live updates
//
// /ui/events subscribes to Source.Watch and sends, per change, the run's
// table row rendered by the same template as the page, whether it matches the
// stream's filters, and its creation time; the script replaces, inserts or
// removes the row. On connecting, the server first subscribes and then says
// "hello"; the script then re-reads the page's content, so a change between
// the page's rendering and the subscription is never missed. A stream that
// may have missed changes (the subscription's buffer was full) says "resync"
// for the same effect. Comments (": ping") every Options.Heartbeat keep
// proxies from closing an idle stream. Each write has its own deadline, so
// a stream outlives the server's WriteTimeout; at most Options.MaxStreams
// streams are open at once (503 with Retry-After beyond, and the script
// tries again). A stream ends when the client goes
// away or when StopStreams is called (register it with
// http.Server.RegisterOnShutdown: Shutdown does not end streaming responses
// by itself).
package statuspage
