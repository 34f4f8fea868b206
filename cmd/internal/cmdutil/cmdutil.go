// Package cmdutil is what batchd's commands (cmd/batchd, cmd/batchd-dev)
// share: the exit codes scripts rely on, flag parsing, configuration and API
// error reports, and following a run through the daemon's API.
package cmdutil

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
)

// Exit codes. Scripts rely on them; they are part of the CLI's contract.
const (
	ExitOK        = 0 // done: completed (or submitted, without --wait); explain: every verdict allows
	ExitFailed    = 1 // the job Failed or was Canceled; explain: a verdict rejects
	ExitUsage     = 2 // usage or configuration error
	ExitAuth      = 3 // authentication or authorization failure
	ExitRejected  = 4 // the endpoint rejected the request (other 4xx)
	ExitTransient = 5 // transient or ambiguous failure: try again, or check before retrying
)

// ParseInterleaved parses flags that may come after positional arguments
// (batchd runs show ID --json) and returns the positional ones.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// NewFlagSet is a flag set whose -h prints usage and the flags on w.
func NewFlagSet(w io.Writer, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprint(w, usage)
		fmt.Fprintln(w, "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// APIExit reports an API error of the command what ("runs show") and
// returns its exit code.
func APIExit(w io.Writer, what string, err error) int {
	fmt.Fprintf(w, "batchd %s: %v\n", what, err)
	return APIExitCode(err)
}

// APIExitCode is the exit code for an error of the daemon's API.
func APIExitCode(err error) int {
	switch st := apiclient.StatusOf(err); {
	case st == 0:
		return ExitTransient // not reached, or no answer
	case st == http.StatusBadRequest:
		return ExitUsage
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		return ExitAuth
	case st >= 500:
		return ExitTransient
	default:
		return ExitRejected
	}
}

// PrintJSON prints v indented (a json.RawMessage as it is).
func PrintJSON(w io.Writer, v any) {
	if raw, ok := v.(json.RawMessage); ok {
		_, _ = w.Write(raw)
		if len(raw) > 0 && raw[len(raw)-1] != '\n' {
			fmt.Fprintln(w)
		}
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// PrintRun writes a run for people.
func PrintRun(w io.Writer, r *orchestrator.Run) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("Run:", r.ID)
	row("Pipeline:", Dash(r.Pipeline))
	row("Key:", r.Key)
	row("Source:", r.Source)
	row("State:", string(r.State))
	row("Endpoint:", r.Endpoint)
	if r.Job != nil {
		row("Job:", r.Job.Name+" ("+Dash(string(r.Job.Status))+")")
		row("Studio:", r.Job.StudioURL)
	}
	if r.Attempts > 0 {
		row("Attempts:", fmt.Sprint(r.Attempts))
	}
	for _, pj := range r.PreviousJobs {
		row("Earlier job:", pj.Name+" ("+Dash(string(pj.Status))+") "+pj.Error)
	}
	if r.Request != nil {
		for _, name := range SortedNames(r.Request.Inputs) {
			in := r.Request.Inputs[name]
			v := in.URI
			if v == "" {
				v = in.Value
			}
			row("Input "+name+":", in.Type+" "+v)
		}
		for _, name := range SortedNames(r.Request.Outputs) {
			out := r.Request.Outputs[name]
			row("Output "+name+":", out.Type+" "+out.URI)
		}
	}
	if r.Decision != nil {
		d := string(r.Decision.Verdict)
		if r.Decision.Reason != "" {
			d += ": " + r.Decision.Reason
		}
		row("Decision:", d)
	}
	row("Error:", r.Error)
	if r.Duplicates > 0 {
		row("Duplicates:", fmt.Sprintf("%d redeliveries ignored", r.Duplicates))
	}
	row("Created:", r.Created.Local().Format(time.RFC3339))
	row("Updated:", r.Updated.Local().Format(time.RFC3339))
	tw.Flush()
	if r.Decision != nil && len(r.Decision.Checks) > 0 {
		fmt.Fprintln(w, "\nChecks:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, ch := range r.Decision.Checks {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", ch.Result, ch.Name, Dash(ch.Subject), ch.Reason)
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\nHistory:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, h := range r.History {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.At.Local().Format("2006-01-02 15:04:05.000"), h.State, h.Reason)
	}
	tw.Flush()
}

// ErrWaitTimeout means --wait gave up before the run ended.
var ErrWaitTimeout = errors.New("timed out waiting for the run to finish")

// StateExit is the exit code for a run that ended in s.
func StateExit(s orchestrator.State) int {
	switch s {
	case orchestrator.StateCompleted:
		return ExitOK
	case orchestrator.StateFailed, orchestrator.StateCanceled, orchestrator.StateTimedOut:
		return ExitFailed
	case orchestrator.StateRejected, orchestrator.StateFiltered, orchestrator.StateDuplicate:
		return ExitRejected
	}
	return ExitTransient
}

// WaitRun polls the run until it is finished (or unknown, which needs an
// operator), printing each new state on stderr.
func WaitRun(ctx context.Context, w io.Writer, cl *apiclient.Client, id string, timeout time.Duration) (*orchestrator.Run, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	interval := 500 * time.Millisecond
	var last orchestrator.State
	failures := 0
	for {
		r, err := cl.GetRun(ctx, id)
		switch {
		case err == nil:
			failures = 0
			if r.State != last {
				last = r.State
				reason := ""
				if n := len(r.History); n > 0 {
					reason = r.History[n-1].Reason
				}
				fmt.Fprintf(w, "%s  %-10s %s\n", time.Now().Format("15:04:05"), r.State, reason)
			}
			if r.State.Terminal() || r.State == orchestrator.StateUnknown {
				return r, nil
			}
		case ctx.Err() != nil:
		case apiclient.StatusOf(err) == http.StatusNotFound && last == "":
			// Accepted, not yet taken by a worker: the run is not recorded yet.
		case apiclient.StatusOf(err) == 0 || apiclient.StatusOf(err) >= 500:
			if failures++; failures > 10 {
				return nil, err
			}
		default:
			return nil, err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, ErrWaitTimeout
			}
			return nil, ctx.Err()
		case <-t.C:
		}
		interval = min(interval*3/2, 10*time.Second)
	}
}

// Dash is s, or "-" for an empty table cell.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// SortedNames are the keys of m in order.
func SortedNames[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// FlagExit maps a flag parsing error to an exit code: -h is success.
func FlagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitUsage
}

// NewLogger builds the process logger from the environment's level and format.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// ConfigExit prints a configuration error and returns ExitUsage. Every
// problem is on its own line with its field path.
func ConfigExit(w io.Writer, err error) int {
	var ce *config.Error
	if errors.As(err, &ce) {
		where := "configuration"
		if ce.File != "" {
			where = ce.File
		}
		fmt.Fprintf(w, "batchd: %d problem(s) in %s:\n", len(ce.Problems), where)
		for _, p := range ce.Problems {
			fmt.Fprintf(w, "  %v\n", p)
		}
		return ExitUsage
	}
	fmt.Fprintf(w, "batchd: %v\n", err)
	return ExitUsage
}
