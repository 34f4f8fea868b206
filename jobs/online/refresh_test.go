package online_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

// Credentials are refreshed before they expire, on fake time: an in-process
// simulator (no sockets) built inside the bubble issues tokens on the
// bubble's clock, so an hour passes instantly.
//
//   - aml_token: the token action's answer says refreshAfterTimeUtc = 30 min
//     into a 1 h life; the client fetches a new token after that, well
//     before expiryTimeUtc, and never sends an expired one.
//   - aad_token: an Entra token living 1 h is fetched again at 80% of its
//     life (48 min), before the 5-minute margin.
func TestRefreshBeforeExpiry(t *testing.T) {
	tests := []struct {
		mode         string
		route        jobstest.Route
		stillCached  time.Duration // a request at this age uses the first credential
		refreshed    time.Duration // one at this age has fetched a new one
		tokenOptions jobstest.OnlineOptions
	}{
		{online.AuthAMLToken, jobstest.RouteOnlineToken, 29 * time.Minute, 31 * time.Minute,
			jobstest.OnlineOptions{AuthMode: online.AuthAMLToken, AMLTokenLifetime: time.Hour}},
		{online.AuthAADToken, jobstest.RouteToken, 47 * time.Minute, 49 * time.Minute,
			jobstest.OnlineOptions{AuthMode: online.AuthAADToken}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sim := jobstest.NewInProcess(jobstest.Options{TokenLifetime: time.Hour})
				defer func() { _ = sim.Close() }()
				if err := sim.AddOnlineEndpoint("ep", tt.tokenOptions); err != nil {
					t.Fatal(err)
				}
				c, err := online.New(sim.Credential("refresh-test"), online.Options{
					ARMEndpoint: sim.ARMEndpoint(), Transport: sim.InProcessTransport(),
				})
				if err != nil {
					t.Fatal(err)
				}
				ep := sim.OnlineEndpoint("ep")
				score := func(when string) {
					t.Helper()
					resp, err := c.Score(context.Background(), ep, online.Request{Body: []byte(`{}`)})
					if err != nil {
						t.Fatalf("Score %s: %v", when, err)
					}
					if resp.Attempts != 1 {
						t.Fatalf("Score %s took %d attempts, want 1 (a refused credential means it was not refreshed in time)", when, resp.Attempts)
					}
				}
				start := time.Now()
				score("at start")
				for time.Since(start) < tt.stillCached {
					time.Sleep(time.Minute)
					score("within the credential's life")
				}
				if got := sim.Count(tt.route); got != 1 {
					t.Fatalf("%s requests after %s = %d, want 1", tt.route, tt.stillCached, got)
				}
				time.Sleep(tt.refreshed - time.Since(start))
				score("after the refresh point")
				if got := sim.Count(tt.route); got != 2 {
					t.Fatalf("%s requests after %s = %d, want 2 (refreshed before expiry)", tt.route, tt.refreshed, got)
				}
				// Hours of steady traffic: about one fetch per refresh
				// period, never an expired credential (every Score above
				// and below checks it took one attempt).
				for range 6 * 60 {
					time.Sleep(time.Minute)
					score("in steady traffic")
				}
				if got := sim.Count(tt.route); got > 2+6*60/25 {
					t.Errorf("%s requests over 6 hours = %d, want about one per refresh period", tt.route, got)
				}
			})
		})
	}
}

// A token the endpoint refuses before its time (revoked, say) is replaced
// at once: one 401, one new token, the request scored.
func TestRefusedAMLTokenIsRefetchedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sim := jobstest.NewInProcess(jobstest.Options{})
		defer func() { _ = sim.Close() }()
		if err := sim.AddOnlineEndpoint("ep", jobstest.OnlineOptions{AuthMode: online.AuthAMLToken}); err != nil {
			t.Fatal(err)
		}
		c, err := online.New(sim.Credential("refetch-test"), online.Options{ARMEndpoint: sim.ARMEndpoint(), Transport: sim.InProcessTransport()})
		if err != nil {
			t.Fatal(err)
		}
		ep := sim.OnlineEndpoint("ep")
		if _, err := c.Score(context.Background(), ep, online.Request{Body: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		sim.Inject(jobstest.RouteScore, jobstest.Fault{Status: 401, Message: "token revoked"})
		resp, err := c.Score(context.Background(), ep, online.Request{Body: []byte(`{}`)})
		if err != nil || resp.Attempts != 2 {
			t.Fatalf("Score after a 401 = %v, %+v; want success on the second attempt", err, resp)
		}
		if got := sim.Count(jobstest.RouteOnlineToken); got != 2 {
			t.Errorf("token actions = %d, want 2", got)
		}
		// A second 401 in a row is final: no third token.
		sim.Inject(jobstest.RouteScore, jobstest.Fault{Status: 401}, jobstest.Fault{Status: 401})
		_, err = c.Score(context.Background(), ep, online.Request{Body: []byte(`{}`)})
		if online.KindOf(err) != online.KindRejected || !online.IsAuth(err) {
			t.Errorf("Score after two 401s = %v, want a rejected auth error", err)
		}
		if got := sim.Count(jobstest.RouteOnlineToken); got != 3 {
			t.Errorf("token actions = %d, want 3", got)
		}
	})
}
