package datastores

import (
	"testing"
)

func BenchmarkClassify(b *testing.B) {
	forms := []struct{ name, uri string }{
		{"datastore", "azureml://datastores/workspaceblobstore/paths/batch/in/2026/01/01/data.csv"},
		{"datastore-long", "azureml://subscriptions/" + testSub + "/resourcegroups/rg/workspaces/ws1/datastores/raw/paths/a/b.csv"},
		{"asset", "azureml://locations/eastus/workspaces/ws1/data/heart/versions/labels/latest"},
		{"blob", "https://acct1.blob.core.windows.net/inbox/in/2026/01/01/data%20file.csv"},
		{"abfss", "abfss://fs1@acct1.dfs.core.windows.net/in/2026/01/01/"},
		{"azurite", "http://127.0.0.1:10000/devstoreaccount1/inbox/in/data.csv"},
		{"rejected", "azureml:mydata:1"},
	}
	for _, f := range forms {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Classify(f.uri)
			}
		})
	}
}

// BenchmarkPreflightBlob is a full Check of one UriFile blob input (and one
// datastore output) against Azurite: classification, rule table, allow-list,
// GetProperties, output GetProperties. "cold" bypasses the cache; "cached"
// reuses the input probe (the output probe is never cached).
func BenchmarkPreflightBlob(b *testing.B) {
	srv, client := startAzurite(b)
	seed(b, client, []string{"inbox", "outbox"}, map[string]string{"inbox/in/data.csv": "1,2,3\n4,5,6\n"})
	req := Request{
		Inputs:  []IO{{Name: "data", Type: TypeUriFile, URI: srv.AccountURL() + "inbox/in/data.csv"}},
		Outputs: []IO{{Name: "score", Type: TypeUriFile, URI: "azureml://datastores/out/paths/run-1/predictions.csv"}},
		Allow:   AllowList{Accounts: []string{"devstoreaccount1"}, Containers: []string{"inbox", "outbox"}},
	}
	ds := map[string]Datastore{"out": {Kind: DatastoreBlob, Account: "devstoreaccount1", Container: "outbox", Credentials: CredentialsAccountKey}}
	for _, mode := range []struct {
		name string
		ttl  int
	}{{"cold", -1}, {"cached", 0}} {
		b.Run(mode.name, func(b *testing.B) {
			c := NewChecker(CheckerOptions{Datastores: ds, Storage: azuriteStorage(srv), CacheTTL: -1})
			if mode.ttl == 0 {
				c = NewChecker(CheckerOptions{Datastores: ds, Storage: azuriteStorage(srv)})
			}
			if d := c.Check(b.Context(), req); d.Verdict != Allow {
				b.Fatalf("verdict = %s (%s), want allow", d.Verdict, d.Reason)
			}
			b.ReportAllocs()
			for b.Loop() {
				c.Check(b.Context(), req)
			}
		})
	}
}
