package statuspage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// Source is the read side of the orchestrator the page shows.
// *orchestrator.Orchestrator implements it.
type Source interface {
	// List returns one page of run summaries, newest first.
	List(opts orchestrator.ListOptions) (*orchestrator.RunList, error)
	// Get returns one run, or an error matching orchestrator.ErrRunNotFound.
	Get(ctx context.Context, id string) (*orchestrator.Run, error)
	// Watch reports every ledger change until ctx ends, then closes the
	// channel. A subscriber more than buffer changes behind misses changes.
	Watch(ctx context.Context, buffer int) <-chan orchestrator.RunChange
	// Pipelines returns the configured pipelines (read only).
	Pipelines() map[string]*orchestrator.Pipeline
}

var _ Source = (*orchestrator.Orchestrator)(nil)

// EndpointStatus is one batch endpoint's admission state, for the endpoints
// view: orchestrator.(*Orchestrator).Endpoints reports it.
type EndpointStatus = orchestrator.EndpointStatus

// Options configure a Page.
type Options struct {
	// Source is the orchestrator. Required.
	Source Source
	// Token, when set, is required as "Authorization: Bearer <Token>" for
	// everything that carries run data (see the package documentation). It
	// is the daemon's API token (BATCHD_API_TOKEN): the page's buttons call
	// the JSON API with it. It is compared in constant time and never logged
	// or written into a page.
	Token string
	// APIPrefix is where the orchestrator's JSON API is mounted. Default
	// "/api/v1".
	APIPrefix string
	// NextFires, when set, returns the next n fire times of a cron
	// pipeline. Nil: the pipelines view says "not available".
	NextFires func(pipeline string, n int) []time.Time
	// Endpoints, when set, returns the admission state of every endpoint.
	// Nil: the endpoints view counts running jobs from the run index and says
	// "not available" for the pause and the poll budget.
	Endpoints func(ctx context.Context) ([]EndpointStatus, error)
	// Replicas, when set, returns the live replicas (the replica registry):
	// the endpoints view lists them and warns of config drift.
	Replicas func() orchestrator.ReplicaList
	// PageSize is the default number of runs per page (default 50; a
	// request may ask for up to 200 with ?limit=).
	PageSize int
	// Heartbeat is the interval of the event stream's keep-alive comments.
	// Default 15s.
	Heartbeat time.Duration
	// WatchBuffer is the change buffer of one event stream (default 1024).
	WatchBuffer int
	// MaxStreams caps the event streams open at once (default 64); a
	// stream beyond it is answered 503 with Retry-After, and the page's
	// script tries again later. Each stream holds a ledger watch.
	MaxStreams int
	Logger     *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Page is the status page's http.Handler. It runs nothing in the
// background: each event stream runs on its request's goroutine, and the
// reads one page load makes in parallel end before it answers.
type Page struct {
	opts      Options
	log       *slog.Logger
	mux       *http.ServeMux
	pages     map[string]*template.Template
	assetVer  string
	static    http.Handler
	rows      *rowCache
	stop      chan struct{}
	stopOnce  sync.Once
	streams   chan struct{} // one token per open event stream
	tokenHash []byte
}

// New checks opts and parses the templates.
func New(opts Options) (*Page, error) {
	if opts.Source == nil {
		return nil, errors.New("statuspage: Options.Source is required")
	}
	if opts.APIPrefix == "" {
		opts.APIPrefix = "/api/v1"
	}
	opts.APIPrefix = strings.TrimRight(opts.APIPrefix, "/")
	if opts.PageSize <= 0 {
		opts.PageSize = 50
	}
	opts.PageSize = min(opts.PageSize, maxPageSize)
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = 1024
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 64
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Page{opts: opts, log: log, rows: newRowCache(rowCacheSize), stop: make(chan struct{}),
		streams: make(chan struct{}, opts.MaxStreams)}
	if opts.Token != "" {
		h := sha256.Sum256([]byte(opts.Token))
		p.tokenHash = h[:]
	}
	if err := p.parseTemplates(); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	p.assetVer, err = assetVersion(sub)
	if err != nil {
		return nil, err
	}
	files := http.StripPrefix("/ui/static/", http.FileServerFS(sub))
	p.static = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("v") == p.assetVer {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.runs)
	mux.HandleFunc("GET /runs/{id}", p.run)
	mux.HandleFunc("GET /pipelines", p.pipelines)
	mux.HandleFunc("GET /endpoints", p.endpoints)
	mux.HandleFunc("GET /ui/events", p.events)
	mux.Handle("GET /ui/static/", p.static)
	mux.HandleFunc("/", p.notFound)
	p.mux = mux
	return p, nil
}

// ServeHTTP serves the status page.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	p.mux.ServeHTTP(w, r)
}

// StopStreams ends every open event stream and refuses new ones (503); the
// other views keep working. Call it when the HTTP server shuts down
// (http.Server.RegisterOnShutdown(page.StopStreams)): Shutdown waits for
// active requests, and a stream never finishes by itself. Safe to call more
// than once.
func (p *Page) StopStreams() {
	p.stopOnce.Do(func() { close(p.stop) })
}

func assetVersion(fsys fs.FS) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, path)
		if err != nil {
			return err
		}
		h.Write([]byte(path))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("statuspage: static assets: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// access is what a request may see.
type access int

const (
	accessShell  access = iota // a token is required and none was sent: the shell only
	accessData                 // no token is required, or the right one was sent
	accessDenied               // a token was sent and it is wrong
)

func (p *Page) access(r *http.Request) access {
	if p.tokenHash == nil {
		return accessData
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return accessShell
	}
	got, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return accessDenied
	}
	// Comparing hashes keeps the comparison constant-time in the token's
	// length as well.
	h := sha256.Sum256([]byte(strings.TrimSpace(got)))
	if subtle.ConstantTimeCompare(h[:], p.tokenHash) != 1 {
		return accessDenied
	}
	return accessData
}

// isFragment reports whether the script asks for the content of <main> only.
func isFragment(r *http.Request) bool { return r.Header.Get("X-Batchd-Fragment") == "1" }

// view is one page to render: the layout fields and the page's own data.
type view struct {
	Page    string // runs | run | pipelines | endpoints | error
	Title   string
	Status  int
	Content any
}

// layoutData is what the templates see.
type layoutData struct {
	Page          string
	Title         string
	Nav           string
	TokenRequired bool
	Shell         bool
	AssetVersion  string
	API           string
	Content       any
}

// gate answers requests that may not see data (the shell or a 401). It
// returns true when the caller should go on and render data.
func (p *Page) gate(w http.ResponseWriter, r *http.Request, page, title string) bool {
	switch p.access(r) {
	case accessData:
		return true
	case accessDenied:
		w.Header().Set("WWW-Authenticate", `Bearer realm="batchd"`)
		p.render(w, r, view{Page: "error", Title: "Not authorized", Status: http.StatusUnauthorized,
			Content: errorView{Heading: "Not authorized", Message: "The API token was not accepted. Enter it again."}})
		return false
	}
	if isFragment(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="batchd"`)
		p.render(w, r, view{Page: "error", Title: "Not authorized", Status: http.StatusUnauthorized,
			Content: errorView{Heading: "Not authorized", Message: "This daemon requires its API token."}})
		return false
	}
	p.write(w, r, page, http.StatusOK, layoutData{
		Page: page, Title: title, Nav: navOf(page), TokenRequired: true, Shell: true,
		AssetVersion: p.assetVer, API: p.opts.APIPrefix,
	}, false)
	return false
}

func navOf(page string) string {
	if page == "run" {
		return "runs"
	}
	return page
}

// render writes v as a whole page, or as the content of <main> for a
// fragment request.
func (p *Page) render(w http.ResponseWriter, r *http.Request, v view) {
	status := v.Status
	if status == 0 {
		status = http.StatusOK
	}
	d := layoutData{
		Page: v.Page, Title: v.Title, Nav: navOf(v.Page), TokenRequired: p.tokenHash != nil,
		AssetVersion: p.assetVer, API: p.opts.APIPrefix, Content: v.Content,
	}
	p.write(w, r, v.Page, status, d, isFragment(r))
}

func (p *Page) write(w http.ResponseWriter, r *http.Request, page string, status int, d layoutData, fragment bool) {
	t, ok := p.pages[page]
	if !ok {
		t = p.pages["error"]
	}
	name := "layout"
	if fragment {
		name = "main"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, d); err != nil {
		// A template error is a bug; the page must not be half written.
		p.log.Error("status page: render", "page", page, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", "Authorization, X-Batchd-Fragment")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}

func (p *Page) notFound(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p.render(w, r, view{Page: "error", Title: "Not found", Status: http.StatusNotFound,
		Content: errorView{Heading: "Not found", Message: "There is no page at " + r.URL.Path + "."}})
}

// errorView is the content of an error page.
type errorView struct {
	Heading string
	Message string
}
