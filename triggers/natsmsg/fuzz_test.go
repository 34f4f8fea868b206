package natsmsg

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/batchd/batchd/orchestrator"
)

// FuzzMessageEvent feeds arbitrary subjects, bodies and Nats-Msg-Ids to the
// message → Event mapping. It must never panic; a message it accepts has a
// JSON object as Data and a stable key (the Nats-Msg-Id when there is one);
// a message it refuses is a *rejection with a reason, never another error.
// The seed corpus is in testdata/fuzz/FuzzMessageEvent.
func FuzzMessageEvent(f *testing.F) {
	f.Add("jobs.in", []byte(`{"uri":"azureml://datastores/d/paths/a.csv"}`), "id-1", "", uint64(0), "")
	f.Add("jobs.in", []byte(`{"uri": not json`), "", "SRC", uint64(7), "")
	f.Add("jobs.in", []byte(`  {"a":{"b":[1,2,{"c":null}]}}  `), "", "", uint64(0), "_INBOX.x")
	f.Add("jobs.in", []byte(`[1,2]`), "", "", uint64(0), "")
	f.Add("", []byte{}, "", "", uint64(0), "")
	f.Add("x", []byte("{\"uri\":\"\xff\xfe\"}"), "\x00", "S", uint64(1<<63), "r")

	s := &Source{o: Options{
		Pipeline: "p", MaxBodyBytes: 4096, DeferReply: true,
		// As the daemon's validation does: the pipeline's templates read
		// .Message.Data.uri.
		Validate: func(ev orchestrator.Event) error {
			var v struct {
				URI *string `json:"uri"`
			}
			if err := json.Unmarshal(ev.Message.Data, &v); err != nil || v.URI == nil {
				return errors.New("no string field uri")
			}
			return nil
		},
	}}
	f.Fuzz(func(t *testing.T, subject string, body []byte, msgID, stream string, seq uint64, reply string) {
		h := nats.Header{}
		if msgID != "" {
			h.Set(nats.MsgIdHdr, msgID)
		}
		at := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
		ev, err := s.event(subject, body, h, stream, at, seq, reply, at)
		again, _ := s.event(subject, body, h, stream, at, seq, reply, at)
		if ev.Key == "" || ev.Key != again.Key {
			t.Fatalf("key %q, then %q: want one stable, non-empty key", ev.Key, again.Key)
		}
		if id := h.Get(nats.MsgIdHdr); id != "" && ev.Key != "nats-msg-id:"+id {
			t.Errorf("key %q, want the Nats-Msg-Id %q", ev.Key, id)
		}
		if ev.Pipeline != "p" || ev.Source != orchestrator.SourceNATS || ev.Message == nil || ev.Message.Subject != subject {
			t.Errorf("event %+v does not describe the message", ev)
		}
		if err != nil {
			var r *rejection
			if !errors.As(err, &r) || strings.TrimSpace(r.reason) == "" {
				t.Fatalf("error %v (%T): want a *rejection with a reason", err, err)
			}
			return
		}
		var obj map[string]any
		if err := json.Unmarshal(ev.Message.Data, &obj); err != nil {
			t.Fatalf("accepted a body whose Data is not a JSON object: %q: %v", ev.Message.Data, err)
		}
		if len(body) > s.o.MaxBodyBytes || !bytes.Equal(bytes.TrimSpace(body), ev.Message.Data) {
			t.Errorf("accepted %d bytes as Data %q", len(body), ev.Message.Data)
		}
	})
}
