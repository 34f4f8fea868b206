package natsmsg

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// ReplyConns knows, per pipeline, the connection its NATS trigger receives
// requests on. A run answers its deferred request there, not on whatever
// connection the replica that ran it holds: a trigger with url: listens on
// another server, where the requester's inbox is. It implements
// orchestrator.ReplyConns.
//
// Main creates one with the daemon's own connection and gives it to the
// orchestrator and to every source. A source with url: declares itself at
// New and registers its connection while it runs; a request of such a
// pipeline has no connection on a replica whose trigger is not running,
// and is not answered from the wrong server. Other pipelines' requests
// came in on the daemon's own NATS, which every replica has.
type ReplyConns struct {
	own    *nats.Conn
	mu     sync.Mutex
	remote map[string]bool
	conns  map[string]*nats.Conn
}

// NewReplyConns returns the set for a daemon whose own connection is own.
func NewReplyConns(own *nats.Conn) *ReplyConns {
	return &ReplyConns{own: own, remote: map[string]bool{}, conns: map[string]*nats.Conn{}}
}

// ReplyConn is the connection a reply to a request of pipeline goes out
// on, and false when this replica has none (the pipeline's trigger listens
// on another server and does not run here).
func (r *ReplyConns) ReplyConn(pipeline string) (*nats.Conn, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if nc, ok := r.conns[pipeline]; ok {
		return nc, true
	}
	if r.remote[pipeline] || r.own == nil {
		return nil, false
	}
	return r.own, true
}

func (r *ReplyConns) declare(pipeline string, remote bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.remote[pipeline] = remote
}

func (r *ReplyConns) set(pipeline string, nc *nats.Conn) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if nc == nil {
		delete(r.conns, pipeline)
		return
	}
	r.conns[pipeline] = nc
}
