package jobstest

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Reset says whether and when a fault resets the connection.
type Reset int

// Reset modes.
const (
	// NoReset answers normally (or with Fault.Status).
	NoReset Reset = iota
	// ResetBefore reads the request and resets the connection without
	// handling it: no job is created.
	ResetBefore
	// ResetAfter handles the request (a create creates the job) and then
	// resets the connection instead of answering: the client cannot know
	// whether its POST took effect.
	ResetAfter
)

// Fault is one injected misbehaviour for one request.
type Fault struct {
	// Status, when non-zero, is answered instead of handling the request,
	// with an ARM-style error body {"error":{"code","message"}}.
	Status int
	// AfterHandling, with Status, handles the request first (a create
	// creates the job) and answers Status instead of the handler's answer:
	// a gateway that fails (502, 504) after the service accepted the job.
	// Without it a Status fault never reaches the handler, so a chaos run
	// that wants "5xx, yet the job exists" sets it.
	AfterHandling bool
	// RetryAfter adds Retry-After (whole seconds, rounded up) and
	// retry-after-ms headers to a Status answer.
	RetryAfter time.Duration
	// Code and Message fill the error body (defaults derive from Status).
	Code, Message string
	// Body, when set, replaces the whole error body verbatim.
	Body string
	// Reset resets the connection before or after handling the request.
	Reset Reset
	// Delay holds the request this long before anything else happens. The
	// request is then handled even if the client has given up, as a real
	// service would.
	Delay time.Duration
}

type faultRate struct {
	rate   float64
	faults []Fault
}

// Inject queues faults for route; each request on the route consumes one,
// in order, before random faults (SetFaultRate) are considered.
func (s *Sim) Inject(route Route, faults ...Fault) {
	i := routeIndex(route)
	if i < 0 {
		panic("jobstest: unknown route " + string(route))
	}
	s.mu.Lock()
	s.faults[i] = append(s.faults[i], faults...)
	s.mu.Unlock()
}

// SetFaultRate makes a request on route fail with probability rate, with a
// fault picked at random from faults. Rate 0 (or no faults) turns it off.
func (s *Sim) SetFaultRate(route Route, rate float64, faults ...Fault) {
	i := routeIndex(route)
	if i < 0 {
		panic("jobstest: unknown route " + string(route))
	}
	s.mu.Lock()
	s.rates[i] = faultRate{rate: rate, faults: append([]Fault(nil), faults...)}
	s.mu.Unlock()
}

// PendingFaults returns how many queued faults route has not consumed yet.
func (s *Sim) PendingFaults(route Route) int {
	i := routeIndex(route)
	if i < 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.faults[i])
}

// ClearFaults drops every queued fault and random rate.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	s.faults = [numRoutes][]Fault{}
	s.rates = [numRoutes]faultRate{}
	s.mu.Unlock()
}

func (s *Sim) nextFault(i int) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.faults[i]; len(q) > 0 {
		f := q[0]
		s.faults[i] = q[1:]
		return f, true
	}
	if fr := s.rates[i]; fr.rate > 0 && len(fr.faults) > 0 && s.rng.Float64() < fr.rate {
		return fr.faults[s.rng.IntN(len(fr.faults))], true
	}
	return Fault{}, false
}

// route wraps a handler with counting and fault injection.
func (s *Sim) route(r Route, h http.HandlerFunc) http.Handler {
	i := routeIndex(r)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s.handlers.Add(1)
		defer s.handlers.Done()
		s.counts[i].Add(1)
		f, ok := s.nextFault(i)
		if !ok {
			h(w, req)
			return
		}
		s.log.Debug("jobstest fault", "route", r, "status", f.Status, "reset", f.Reset, "delay", f.Delay)
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				panic(http.ErrAbortHandler) // closing: drop the connection, no answer
			}
		}
		switch {
		case f.Reset == ResetBefore:
			_, _ = io.Copy(io.Discard, io.LimitReader(req.Body, 1<<20))
			resetConn(w)
		case f.Status != 0 && f.AfterHandling:
			h(&discardWriter{header: http.Header{}}, req)
			writeFault(w, f)
		case f.Status != 0:
			_, _ = io.Copy(io.Discard, io.LimitReader(req.Body, 1<<20))
			writeFault(w, f)
		case f.Reset == ResetAfter:
			h(&discardWriter{header: http.Header{}}, req)
			resetConn(w)
		default:
			h(w, req)
		}
	})
}

func writeFault(w http.ResponseWriter, f Fault) {
	if f.RetryAfter > 0 {
		secs := (f.RetryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", strconv.FormatInt(int64(secs), 10))
		w.Header().Set("retry-after-ms", strconv.FormatInt(f.RetryAfter.Milliseconds(), 10))
	}
	if f.Body != "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		_, _ = io.WriteString(w, f.Body)
		return
	}
	code, msg := f.Code, f.Message
	if code == "" {
		code = defaultCode(f.Status)
	}
	if msg == "" {
		msg = "simulated " + strconv.Itoa(f.Status) + " " + http.StatusText(f.Status)
	}
	if f.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token", error_description="`+msg+`"`)
	}
	writeError(w, f.Status, code, msg)
}

func defaultCode(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "InvalidAuthenticationToken"
	case http.StatusForbidden:
		return "AuthorizationFailed"
	case http.StatusNotFound:
		return "NotFound"
	case http.StatusConflict:
		return "Conflict"
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	}
	if status >= 500 {
		return "InternalServerError"
	}
	return "UserError"
}

// writeError writes the ARM error shape {"error":{"code","message"}}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg, "details": []any{}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// resetConn hijacks the connection and closes it with SO_LINGER 0, so the
// client sees a TCP reset rather than an orderly close.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // closes the connection without an answer
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = raw.Close()
}

// discardWriter swallows the answer of a request that ResetAfter handles.
type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}
