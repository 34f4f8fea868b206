package orchestrator

import "context"

// runKind is what differs between the two kinds of run: a batch run (a
// job, POSTed once and tracked to its end) and an online run (one scoring
// request, answered to its requester). Steps ask the run's kind instead of
// branching on it; a new endpoint kind is a new implementation (see
// docs/ARCHITECTURE.md).
type runKind interface {
	// received decides a run that has no request yet: batch renders the
	// job, runs the preflight and goes on to admission; online scores.
	received(st *step, p *Pipeline) (settle, error)
	// foundSubmitting decides a run found in submitting: a step died (or
	// is still running elsewhere) with its request in flight.
	foundSubmitting(st *step) (settle, error)
	// answer tells the run's requester its outcome: after the terminal
	// write (full is the whole response body, when the step has it), again
	// when the run's message is redelivered, and to a duplicate request's
	// reply subject (duplicate). Batch runs have no requester to answer.
	answer(ctx context.Context, r *record, full []byte, reply string, duplicate bool)
	// quietSteps: the states before the outcome are logged at debug (an
	// online run takes milliseconds; its outcome is the decision).
	quietSteps() bool
	// adoptsJobs: an operator may resolve the run by adopting a job.
	adoptsJobs() bool
}

// kindOf is r's kind: online when it was made as an online run or its
// pipeline is configured online now, else batch.
func (o *Orchestrator) kindOf(r *record) runKind {
	if r.Online != nil {
		return onlineRun{o}
	}
	if p := o.pipelines[r.Pipeline]; p != nil && p.IsOnline() {
		return onlineRun{o}
	}
	return batchRun{o}
}

// batchRun is the kind of a run whose endpoint is a batch endpoint
// (machine.go, tracker.go).
type batchRun struct{ o *Orchestrator }

func (k batchRun) received(st *step, p *Pipeline) (settle, error)      { return k.o.stepPreflight(st, p) }
func (k batchRun) foundSubmitting(st *step) (settle, error)            { return k.o.stepFoundSubmitting(st) }
func (batchRun) answer(context.Context, *record, []byte, string, bool) {}
func (batchRun) quietSteps() bool                                      { return false }
func (batchRun) adoptsJobs() bool                                      { return true }

// onlineRun is the kind of a run whose endpoint is an online endpoint
// (online.go).
type onlineRun struct{ o *Orchestrator }

func (k onlineRun) received(st *step, p *Pipeline) (settle, error) { return k.o.stepOnline(st, p, "") }
func (k onlineRun) foundSubmitting(st *step) (settle, error) {
	return k.o.stepOnlineFoundSubmitting(st)
}
func (k onlineRun) answer(ctx context.Context, r *record, full []byte, reply string, duplicate bool) {
	k.o.deliverOnline(ctx, r, full, reply, duplicate)
}
func (onlineRun) quietSteps() bool { return true }
func (onlineRun) adoptsJobs() bool { return false }
