package statuspage

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/orchestrator"
)

// sseBlock is one block of a text/event-stream: an event or comments.
type sseBlock struct {
	event    string
	data     string
	comments []string
}

// sseReader reads blocks from a stream on a goroutine, so that a test can
// wait for one with a deadline.
type sseReader struct {
	blocks chan sseBlock
	done   chan error
}

func readSSE(body io.Reader) *sseReader {
	r := &sseReader{blocks: make(chan sseBlock, 64), done: make(chan error, 1)}
	go func() {
		br := bufio.NewReader(body)
		var b sseBlock
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				r.done <- err
				close(r.blocks)
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				r.blocks <- b
				b = sseBlock{}
			case strings.HasPrefix(line, ":"):
				b.comments = append(b.comments, strings.TrimSpace(line[1:]))
			case strings.HasPrefix(line, "event: "):
				b.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				b.data += line[len("data: "):]
			}
		}
	}()
	return r
}

// next returns the next block that is an event (skipping comments).
func (r *sseReader) next(t *testing.T) sseBlock {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case b, ok := <-r.blocks:
			if !ok {
				t.Fatalf("the stream ended: %v", <-r.done)
			}
			if b.event != "" {
				return b
			}
		case <-deadline:
			t.Fatalf("no event within 5s")
		}
	}
}

func openStream(t *testing.T, ctx context.Context, url string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestEventsStream(t *testing.T) {
	src := newFakeSource("score", "train")
	p := newPage(t, src, func(o *Options) { o.Heartbeat = 20 * time.Millisecond })
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	res := openStream(t, ctx, srv.URL+"/ui/events?pipeline=score") //nolint:bodyclose // openStream closes it at cleanup
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("status %d, type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	sse := readSSE(res.Body)
	if b := sse.next(t); b.event != "hello" {
		t.Fatalf("first event %q, want hello", b.event)
	}
	// hello comes after the subscription: a change now is not missed.
	if n := src.watchers.Load(); n != 1 {
		t.Fatalf("%d subscriptions after hello, want 1", n)
	}

	decode := func(b sseBlock) runEvent {
		t.Helper()
		if b.event != "run" {
			t.Fatalf("event %q, want run", b.event)
		}
		var ev runEvent
		if err := json.Unmarshal([]byte(b.data), &ev); err != nil {
			t.Fatalf("event data %q: %v", b.data, err)
		}
		return ev
	}
	score := mkRun("s1", "score", orchestrator.StateRunning, time.Minute)
	src.publish("s1", score)
	ev := decode(sse.next(t))
	if ev.ID != "s1" || !ev.Match || ev.State != "running" || ev.Created != score.Created.UnixMilli() ||
		!strings.HasPrefix(ev.Row, `<tr data-run-id="s1"`) || !strings.Contains(ev.Row, "s1.csv") {
		t.Errorf("event %+v, want a matching running row of s1 with its input", ev)
	}

	src.publish("t1", mkRun("t1", "train", orchestrator.StateCompleted, time.Minute))
	if ev := decode(sse.next(t)); ev.ID != "t1" || ev.Match {
		t.Errorf("event %+v, want t1 not matching the pipeline filter", ev)
	}

	src.publish("s1", nil)
	if diff := cmp.Diff(runEvent{ID: "s1", Removed: true}, decode(sse.next(t))); diff != "" {
		t.Errorf("removal (-want +got):\n%s", diff)
	}

	// Heartbeats.
	deadline := time.After(5 * time.Second)
	for pinged := false; !pinged; {
		select {
		case b := <-sse.blocks:
			pinged = len(b.comments) > 0 && b.comments[0] == "ping"
		case <-deadline:
			t.Fatal("no heartbeat within 5s")
		}
	}

	// The client goes away: the handler ends and unsubscribes.
	cancel()
	waitUntil(t, "the subscription to end", func() bool { return src.watchers.Load() == 0 })
}

func TestEventsStateFilter(t *testing.T) {
	src := newFakeSource("score")
	p := newPage(t, src)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	res := openStream(t, t.Context(), srv.URL+"/ui/events?state=failed")
	sse := readSSE(res.Body)
	sse.next(t) // hello
	src.publish("a", mkRun("a", "score", orchestrator.StateRunning, time.Minute))
	src.publish("b", mkRun("b", "score", orchestrator.StateFailed, time.Minute))
	var got []string
	for len(got) < 2 {
		var ev runEvent
		if err := json.Unmarshal([]byte(sse.next(t).data), &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.ID+":"+map[bool]string{true: "match", false: "no"}[ev.Match])
	}
	if diff := cmp.Diff([]string{"a:no", "b:match"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	res.Body.Close()

	if r := get(t, p, "/ui/events?state=nope"); r.status != http.StatusBadRequest {
		t.Errorf("bad state filter: status %d, want 400", r.status)
	}
}

func TestEventsResyncAndCoalesce(t *testing.T) {
	src := newFakeSource("score")
	// The subscription starts full: changes may have been dropped.
	src.prefill = []orchestrator.RunChange{
		{ID: "a", Run: mkRun("a", "score", orchestrator.StateRunning, time.Minute)},
		{ID: "b", Run: mkRun("b", "score", orchestrator.StateRunning, time.Minute)},
		{ID: "a", Run: mkRun("a", "score", orchestrator.StateCompleted, time.Minute)},
		{ID: "c", Run: nil},
	}
	p := newPage(t, src, func(o *Options) { o.WatchBuffer = 4 })
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	res := openStream(t, t.Context(), srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	sse := readSSE(res.Body)
	if b := sse.next(t); b.event != "hello" {
		t.Fatalf("first event %q, want hello", b.event)
	}
	if b := sse.next(t); b.event != "resync" {
		t.Fatalf("event %q after a full buffer, want resync", b.event)
	}
	var got []string
	for len(got) < 3 {
		var ev runEvent
		if err := json.Unmarshal([]byte(sse.next(t).data), &ev); err != nil {
			t.Fatal(err)
		}
		s := ev.ID + ":" + ev.State
		if ev.Removed {
			s = ev.ID + ":removed"
		}
		got = append(got, s)
	}
	// a's two changes are one event with its latest state, in first-seen order.
	if diff := cmp.Diff([]string{"a:completed", "b:running", "c:removed"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestEventsServerShutdown(t *testing.T) {
	src := newFakeSource("score")
	p := newPage(t, src)
	srv := httptest.NewUnstartedServer(p)
	srv.Config.RegisterOnShutdown(p.StopStreams)
	srv.Start()
	t.Cleanup(srv.Close)

	res := openStream(t, t.Context(), srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	sse := readSSE(res.Body)
	sse.next(t) // hello

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an open stream: %v, want nil (the stream ends)", err)
	}
	select {
	case <-sse.blocks:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end")
	}
	if err := <-sse.done; !errors.Is(err, io.EOF) {
		t.Errorf("stream ended with %v, want EOF", err)
	}
	waitUntil(t, "the subscription to end", func() bool { return src.watchers.Load() == 0 })
	if r := get(t, p, "/ui/events"); r.status != http.StatusServiceUnavailable {
		t.Errorf("a stream after StopStreams: status %d, want 503", r.status)
	}
	// The other views still work.
	if r := get(t, p, "/"); r.status != 200 {
		t.Errorf("runs after StopStreams: status %d, want 200", r.status)
	}
	p.StopStreams() // idempotent
}

func TestEventsWithToken(t *testing.T) {
	src := newFakeSource("score")
	p := newPage(t, src, func(o *Options) { o.Token = "tok" })
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	res := openStream(t, t.Context(), srv.URL+"/ui/events", "Authorization", "Bearer tok") //nolint:bodyclose // openStream closes it at cleanup
	sse := readSSE(res.Body)
	if b := sse.next(t); b.event != "hello" {
		t.Fatalf("first event %q, want hello", b.event)
	}
	src.publish("a", mkRun("a", "score", orchestrator.StateRunning, time.Minute))
	if b := sse.next(t); b.event != "run" {
		t.Errorf("event %q, want run", b.event)
	}
}

// A stream outlives the server's WriteTimeout and ReadTimeout (batchd
// serve sets both): each write sets its own deadline, and net/http clears
// the read deadline while a handler runs (its background read).
func TestEventsOutliveWriteTimeout(t *testing.T) {
	src := newFakeSource("score")
	p := newPage(t, src, func(o *Options) { o.Heartbeat = 20 * time.Millisecond })
	srv := httptest.NewUnstartedServer(p)
	srv.Config.WriteTimeout = 150 * time.Millisecond
	srv.Config.ReadTimeout = 100 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	res := openStream(t, t.Context(), srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	sse := readSSE(res.Body)
	sse.next(t) // hello
	start := time.Now()
	for time.Since(start) < 4*srv.Config.WriteTimeout {
		select {
		case _, ok := <-sse.blocks:
			if !ok {
				t.Fatalf("the stream ended after %s: %v", time.Since(start), <-sse.done)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no heartbeat within 5s")
		}
	}
	src.publish("a", mkRun("a", "score", orchestrator.StateRunning, time.Minute))
	if b := sse.next(t); b.event != "run" {
		t.Errorf("event %q after the WriteTimeout, want run", b.event)
	}
}

// Streams beyond MaxStreams are refused with 503 and Retry-After; a closed
// stream frees its place.
func TestEventsStreamCap(t *testing.T) {
	src := newFakeSource("score")
	p := newPage(t, src, func(o *Options) { o.MaxStreams = 1 })
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(t.Context())
	first := openStream(t, ctx, srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	sse := readSSE(first.Body)
	sse.next(t)                                                // hello
	second := openStream(t, t.Context(), srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	if second.StatusCode != http.StatusServiceUnavailable || second.Header.Get("Retry-After") == "" {
		t.Errorf("a second stream with MaxStreams 1: status %d, Retry-After %q; want 503 with Retry-After", second.StatusCode, second.Header.Get("Retry-After"))
	}
	cancel()
	waitUntil(t, "the first stream to end", func() bool { return src.watchers.Load() == 0 })
	third := openStream(t, t.Context(), srv.URL+"/ui/events") //nolint:bodyclose // openStream closes it at cleanup
	if third.StatusCode != http.StatusOK {
		t.Errorf("a stream after the first closed: status %d, want 200", third.StatusCode)
	}
}
