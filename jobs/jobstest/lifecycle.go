package jobstest

import (
	"time"

	"github.com/batchd/batchd/jobs"
)

// Step is one status of a simulated job and when the job leaves it.
//
// A job in a step moves on to the next step once it has been reported Polls
// times by a status read (GET on the endpoint or ARM get), or once After has
// passed since the job was created, whichever comes first. A step with
// neither never ends: the job is stuck there. The last step never ends
// either. Poll-counted steps make tests deterministic without sleeping;
// time-based steps serve demos and benchmarks.
type Step struct {
	Status jobs.Status
	Polls  int
	After  time.Duration
}

// Lifecycle is the path a job takes. When its last reached status is
// Failed, the job carries ErrorCode and ErrorMessage.
type Lifecycle struct {
	Steps        []Step
	ErrorCode    string
	ErrorMessage string
}

// IsZero reports whether l has no steps (and so means "the default").
func (l Lifecycle) IsZero() bool { return len(l.Steps) == 0 }

// DefaultLifecycle is NotStarted → Queued → Running → Finalizing →
// Completed, one status read each: the fifth read reports Completed.
func DefaultLifecycle() Lifecycle { return Completes(1) }

// Completes walks NotStarted, Queued, Running and Finalizing, polls reads
// each, and ends Completed.
func Completes(polls int) Lifecycle {
	return Lifecycle{Steps: []Step{
		{Status: jobs.StatusNotStarted, Polls: polls},
		{Status: jobs.StatusQueued, Polls: polls},
		{Status: jobs.StatusRunning, Polls: polls},
		{Status: jobs.StatusFinalizing, Polls: polls},
		{Status: jobs.StatusCompleted},
	}}
}

// Fails walks NotStarted, Queued and Running, one read each, and ends
// Failed with message as the job's error.
func Fails(message string) Lifecycle {
	return Lifecycle{
		Steps: []Step{
			{Status: jobs.StatusNotStarted, Polls: 1},
			{Status: jobs.StatusQueued, Polls: 1},
			{Status: jobs.StatusRunning, Polls: 1},
			{Status: jobs.StatusFailed},
		},
		ErrorCode:    "UserError",
		ErrorMessage: message,
	}
}

// Stuck keeps the job in status forever (until canceled).
func Stuck(status jobs.Status) Lifecycle {
	return Lifecycle{Steps: []Step{{Status: status}}}
}

// Timed is the default path on the wall clock: each of NotStarted, Queued,
// Running and Finalizing lasts each, then the job is Completed.
func Timed(each time.Duration) Lifecycle {
	return Lifecycle{Steps: []Step{
		{Status: jobs.StatusNotStarted, After: each},
		{Status: jobs.StatusQueued, After: 2 * each},
		{Status: jobs.StatusRunning, After: 3 * each},
		{Status: jobs.StatusFinalizing, After: 4 * each},
		{Status: jobs.StatusCompleted},
	}}
}

// cancel states of a job.
const (
	cancelNone uint8 = iota
	cancelRequested
	cancelDone
)

// status returns j's status at now, moving it along its lifecycle. poll
// means the read is a status poll (it counts towards Polls); listing does
// not count. Callers hold the Sim's lock.
func (j *job) status(now time.Time, poll bool) jobs.Status {
	st := j.advance(now, poll)
	if st.Terminal() && j.ended == 0 {
		j.ended = now.UnixNano()
	}
	return st
}

// advance is status without the record of the end.
func (j *job) advance(now time.Time, poll bool) jobs.Status {
	if poll {
		j.polls++
	}
	if j.cancel != cancelNone {
		// A cancel is reported as CancelRequested for one status read, then
		// Canceled, as the service passes through both.
		if j.cancel == cancelRequested && poll {
			if j.seen >= 1 {
				j.cancel = cancelDone
			} else {
				j.seen++
			}
		}
		if j.cancel == cancelDone {
			return jobs.StatusCanceled
		}
		return jobs.StatusCancelRequested
	}
	steps := j.lc.Steps
	for int(j.step) < len(steps)-1 {
		st := steps[j.step]
		if st.Status.Terminal() {
			break
		}
		byPolls := st.Polls > 0 && int(j.seen) >= st.Polls
		byTime := st.After > 0 && now.Sub(j.created) >= st.After
		if !byPolls && !byTime {
			break
		}
		j.step++
		j.seen = 0
	}
	if poll {
		j.seen++
	}
	return steps[j.step].Status
}
