package datastores

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
)

// The storage layout every Azurite preflight test reads.
var (
	testContainers = []string{"inbox", "outbox", "secret"}
	testBlobs      = map[string]string{
		"inbox/files/a.csv":        "1,2,3",
		"inbox/files/empty.csv":    "",
		"inbox/flat/1.csv":         "x",
		"inbox/flat/2.csv":         "y",
		"inbox/nested/sub1/a.csv":  "x",
		"inbox/nested/sub2/b.csv":  "y",
		"inbox/mixed/top.csv":      "x",
		"inbox/mixed/sub/deep.csv": "y",
		"inbox/allempty/e1.csv":    "",
		"inbox/allempty/e2.csv":    "",
		"outbox/done/p.csv":        "x",
		"outbox/donefolder/x.csv":  "x",
		"secret/data/s.csv":        "top secret",
	}
	testDatastores = map[string]Datastore{
		"raw":  {Kind: DatastoreBlob, Account: azurite.Account, Container: "inbox", Credentials: CredentialsNone},
		"out":  {Kind: DatastoreBlob, Account: azurite.Account, Container: "outbox", Credentials: CredentialsAccountKey},
		"lake": {Kind: DatastoreADLSGen2, Account: azurite.Account, Filesystem: "inbox", Credentials: CredentialsNone},
	}
)

type wantCk struct {
	name, subject string
	result        Result
	reasonHas     []string
}

func TestPreflightAzurite(t *testing.T) {
	srv, client := startAzurite(t)
	seed(t, client, testContainers, testBlobs)
	base := srv.AccountURL() // http://127.0.0.1:<port>/devstoreaccount1/
	// ADLS Gen2 directories seen through the blob API: empty blobs marked
	// hdi_isfolder=true. They are neither files nor data.
	for _, dir := range []string{"hns", "hns/sub"} {
		if _, err := client.UploadBuffer(t.Context(), "inbox", dir, nil, &azblob.UploadBufferOptions{
			Metadata: map[string]*string{"hdi_isfolder": to.Ptr("true")}}); err != nil {
			t.Fatalf("upload directory marker: %v", err)
		}
	}
	seed(t, client, nil, map[string]string{"inbox/hns/sub/x.csv": "x"})

	in := func(typ, uri string) Request {
		return Request{Inputs: []IO{{Name: "data", Type: typ, URI: uri}}}
	}
	withOut := func(r Request, typ, uri string) Request {
		r.Outputs = []IO{{Name: "score", Type: typ, URI: uri}}
		return r
	}
	const (
		I = "inputs.data"
		O = "outputs.score"
	)
	tests := []struct {
		name    string
		req     Request
		verdict Verdict
		checks  []wantCk
		absent  []string // check names (about I) that must not be there
	}{
		{"existing file", in(TypeUriFile, base+"inbox/files/a.csv"), Allow, []wantCk{
			{CheckInputExists, I, Pass, []string{`blob "files/a.csv" in container "inbox"`, "exists", "eTag"}},
			{CheckInputNonEmpty, I, Pass, []string{"5 bytes"}},
		}, []string{CheckFolderFlat}},
		{"missing file", in(TypeUriFile, base+"inbox/files/nope.csv"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{`blob "files/nope.csv"`, "does not exist"}},
		}, []string{CheckInputNonEmpty}},
		{"empty file", in(TypeUriFile, base+"inbox/files/empty.csv"), Reject, []wantCk{
			{CheckInputExists, I, Pass, nil},
			{CheckInputNonEmpty, I, Fail, []string{"is empty (0 bytes)"}},
		}, nil},
		{"folder typed UriFile", in(TypeUriFile, base+"inbox/flat"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{"it is a folder, use UriFolder"}},
		}, nil},
		{"file typed UriFolder", in(TypeUriFolder, base+"inbox/files/a.csv"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{`"files/a.csv" is a file: use UriFile`}},
		}, nil},
		{"ADLS directory typed UriFile", in(TypeUriFile, base+"inbox/hns/sub"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{"is a directory, not a file: use UriFolder"}},
		}, nil},
		{"ADLS directory markers are not files", in(TypeUriFolder, base+"inbox/hns/"), Reject, []wantCk{
			{CheckFolderFlat, I, Fail, []string{`only in sub-folders ("hns/sub/")`}},
		}, nil},
		{"missing container", in(TypeUriFile, base+"nocontainer/x.csv"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{`container "nocontainer" does not exist`}},
		}, nil},
		{"flat folder via datastore", in(TypeUriFolder, "azureml://datastores/raw/paths/flat/"), Allow, []wantCk{
			{CheckDatastoreDeclared, I, Pass, []string{`datastore "raw"`, `container "inbox"`}},
			{CheckInputExists, I, Pass, []string{`folder "flat/" in container "inbox"`, "2 files at its top level"}},
			{CheckInputNonEmpty, I, Pass, nil},
			{CheckFolderFlat, I, Pass, nil},
		}, nil},
		{"folder without trailing slash", in(TypeUriFolder, "azureml://datastores/raw/paths/flat"), Allow, []wantCk{
			{CheckFolderFlat, I, Pass, nil},
		}, nil},
		{"nested-only folder", in(TypeUriFolder, "azureml://datastores/raw/paths/nested/"), Reject, []wantCk{
			{CheckInputExists, I, Pass, []string{"in sub-folders only"}},
			{CheckFolderFlat, I, Fail, []string{"only in sub-folders", `"nested/sub1/"`, `"nested/sub2/"`, "do not read nested folders"}},
		}, []string{CheckInputNonEmpty}},
		{"empty folder", in(TypeUriFolder, "azureml://datastores/raw/paths/nothing/"), Reject, []wantCk{
			{CheckInputExists, I, Fail, []string{`folder "nothing/"`, "holds no files"}},
		}, []string{CheckFolderFlat, CheckInputNonEmpty}},
		{"mixed folder warns about sub-folders", in(TypeUriFolder, "azureml://datastores/raw/paths/mixed/"), Allow, []wantCk{
			{CheckFolderFlat, I, Warn, []string{`"mixed/sub/"`, "are ignored"}},
		}, nil},
		{"folder of empty files", in(TypeUriFolder, "azureml://datastores/raw/paths/allempty/"), Reject, []wantCk{
			{CheckInputExists, I, Pass, nil},
			{CheckInputNonEmpty, I, Fail, []string{"all 2 files", "are empty"}},
		}, nil},
		{"ADLS Gen2 datastore", in(TypeUriFile, "azureml://datastores/lake/paths/files/a.csv"), Allow, []wantCk{
			{CheckInputExists, I, Pass, nil},
			{CheckRBAC, I, Warn, []string{"Storage Blob Data Reader"}},
			{CheckPOSIX, I, Warn, []string{"POSIX ACLs", `"files/a.csv"`}},
		}, nil},
		{"production URL checked at the configured endpoint", in(TypeUriFile, "https://devstoreaccount1.blob.core.windows.net/inbox/files/a.csv"), Allow, []wantCk{
			{CheckInputExists, I, Pass, nil},
		}, nil},
		{"output file exists", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFile, "azureml://datastores/out/paths/done/p.csv"), Reject, []wantCk{
			{CheckOutputDatastore, O, Pass, nil},
			{CheckOutputAbsent, O, Fail, []string{`output blob "done/p.csv"`, "already exists", "path already exists"}},
		}, nil},
		{"output file absent", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFile, "azureml://datastores/out/paths/new/p.csv"), Allow, []wantCk{
			{CheckOutputAbsent, O, Pass, []string{"does not exist yet"}},
			{CheckRBAC, O, Pass, []string{"account key"}},
		}, nil},
		{"output folder holds files", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFolder, "azureml://datastores/out/paths/donefolder"), Reject, []wantCk{
			{CheckOutputAbsent, O, Fail, []string{`output folder "donefolder/"`, `"donefolder/x.csv"`}},
		}, nil},
		{"output folder absent", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFolder, "azureml://datastores/out/paths/run-42/"), Allow, []wantCk{
			{CheckOutputAbsent, O, Pass, nil},
		}, nil},
		{"output to a storage URL", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFile, base+"outbox/new/p.csv"), Reject, []wantCk{
			{CheckOutputDatastore, O, Fail, []string{"azureml://datastores/out/paths/new/p.csv"}},
			{CheckOutputAbsent, O, Pass, nil},
		}, nil},
	}
	c := NewChecker(CheckerOptions{Datastores: testDatastores, Storage: azuriteStorage(srv), Logger: discard()})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Check(t.Context(), tt.req)
			if d.Verdict != tt.verdict {
				t.Errorf("verdict = %s (%s), want %s; decision:\n%s", d.Verdict, d.Reason, tt.verdict, dump(d))
			}
			for _, w := range tt.checks {
				wantCheck(t, d, w.name, w.subject, w.result, w.reasonHas...)
			}
			for _, name := range tt.absent {
				noCheck(t, d, name, I)
			}
			checkReason(t, d)
		})
	}

	t.Run("concurrent checks", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				req := in(TypeUriFile, base+"inbox/files/a.csv")
				if i%2 == 1 {
					req = in(TypeUriFolder, "azureml://datastores/raw/paths/flat/")
				}
				if d := c.Check(t.Context(), req); d.Verdict != Allow {
					t.Errorf("check %d: verdict = %s (%s), want allow", i, d.Verdict, d.Reason)
				}
			})
		}
		wg.Wait()
	})

	t.Run("403 from a container the SAS does not cover", func(t *testing.T) {
		cred, err := azblob.NewSharedKeyCredential(azurite.Account, azurite.Key)
		if err != nil {
			t.Fatal(err)
		}
		qp, err := sas.BlobSignatureValues{
			Protocol: sas.ProtocolHTTPSandHTTP, StartTime: time.Now().Add(-time.Hour), ExpiryTime: time.Now().Add(time.Hour),
			Permissions: to.Ptr(sas.ContainerPermissions{Read: true, List: true}).String(), ContainerName: "inbox",
		}.SignWithSharedKey(cred)
		if err != nil {
			t.Fatal(err)
		}
		st := NewStorage(StorageOptions{Accounts: map[string]Account{
			azurite.Account: {BlobEndpoint: srv.AccountURL(), Auth: AuthSAS, SAS: qp.Encode()},
		}})
		var logs bytes.Buffer
		c := NewChecker(CheckerOptions{Datastores: testDatastores, Storage: st,
			Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})

		// The SAS works where it is scoped...
		d := c.Check(t.Context(), in(TypeUriFile, base+"inbox/files/a.csv"))
		wantCheck(t, d, CheckInputExists, I, Pass)
		// ...and is refused elsewhere: a warning that names the credential and what it lacks.
		for _, typ := range []string{TypeUriFile, TypeUriFolder} {
			uri := base + "secret/data/s.csv"
			if typ == TypeUriFolder {
				uri = base + "secret/data/"
			}
			d = c.Check(t.Context(), in(typ, uri))
			if d.Verdict != Allow {
				t.Errorf("%s: verdict = %s (%s), want allow: a refused read cannot be verified, it is not a failure", typ, d.Verdict, d.Reason)
			}
			wantCheck(t, d, CheckInputExists, I, Warn, "not verified", "batchd's own read", "was refused (HTTP 403",
				`the SAS token configured for "devstoreaccount1"`, `container "secret"`, "read (r) and list (l)")
			wantCheck(t, d, CheckInputNonEmpty, I, Warn, "not checked")
			assertNoSecret(t, qp.Signature(), d, logs.String())
		}
	})

	t.Run("cache keeps positive results for the TTL only", func(t *testing.T) {
		var mu sync.Mutex
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
		c := NewChecker(CheckerOptions{Datastores: testDatastores, Storage: azuriteStorage(srv), Logger: discard(),
			CacheTTL: 30 * time.Second, Now: clock})
		seed(t, client, []string{"cache"}, map[string]string{"cache/f.csv": "data", "cache/dir/f.csv": "data"})

		file := in(TypeUriFile, base+"cache/f.csv")
		folder := in(TypeUriFolder, base+"cache/dir/")
		wantCheck(t, c.Check(t.Context(), file), CheckInputExists, I, Pass)
		wantCheck(t, c.Check(t.Context(), folder), CheckInputExists, I, Pass)
		for _, name := range []string{"f.csv", "dir/f.csv"} {
			if _, err := client.DeleteBlob(t.Context(), "cache", name, nil); err != nil {
				t.Fatalf("DeleteBlob: %v", err)
			}
		}
		advance(29 * time.Second)
		wantCheck(t, c.Check(t.Context(), file), CheckInputExists, I, Pass, "cached")
		wantCheck(t, c.Check(t.Context(), folder), CheckInputExists, I, Pass, "cached")
		advance(2 * time.Second)
		wantCheck(t, c.Check(t.Context(), file), CheckInputExists, I, Fail, "does not exist")
		wantCheck(t, c.Check(t.Context(), folder), CheckInputExists, I, Fail, "holds no files")

		// A missing input is not cached: the file may arrive a moment later.
		seed(t, client, nil, map[string]string{"cache/f.csv": "data"})
		wantCheck(t, c.Check(t.Context(), file), CheckInputExists, I, Pass)

		// Nor is an absent output: the next run must see the output the last one wrote.
		out := withOut(file, TypeUriFile, "azureml://datastores/out/paths/cached/p.csv")
		wantCheck(t, c.Check(t.Context(), out), CheckOutputAbsent, O, Pass)
		seed(t, client, nil, map[string]string{"outbox/cached/p.csv": "x"})
		wantCheck(t, c.Check(t.Context(), out), CheckOutputAbsent, O, Fail)

		// A negative TTL disables the cache.
		nc := NewChecker(CheckerOptions{Storage: azuriteStorage(srv), CacheTTL: -1, Now: clock})
		wantCheck(t, nc.Check(t.Context(), file), CheckInputExists, I, Pass)
		if _, err := client.DeleteBlob(t.Context(), "cache", "f.csv", nil); err != nil {
			t.Fatalf("DeleteBlob: %v", err)
		}
		wantCheck(t, nc.Check(t.Context(), file), CheckInputExists, I, Fail)
	})

	// What each storage check costs, in requests: a preflight runs for every
	// event, so a wasted round trip is paid at the event rate.
	t.Run("storage requests per check", func(t *testing.T) {
		var n atomic.Int64
		st := NewStorage(StorageOptions{Transport: countingTransport{&n, http.DefaultClient}, Accounts: map[string]Account{
			azurite.Account: {Name: azurite.Account, BlobEndpoint: srv.AccountURL(), Auth: AuthSharedKey, Key: azurite.Key},
		}})
		c := NewChecker(CheckerOptions{Datastores: testDatastores, Storage: st, Logger: discard(), CacheTTL: -1})
		tests := []struct {
			name  string
			req   Request
			want  int64
			check string
			r     Result
		}{
			{"existing file: one read of its properties", in(TypeUriFile, base+"inbox/files/a.csv"), 1, CheckInputExists, Pass},
			{"missing file: properties, then a listing for the folder hint", in(TypeUriFile, base+"inbox/files/nope.csv"), 2, CheckInputExists, Fail},
			{"missing folder: the listing, then the file hint (no second listing)", in(TypeUriFolder, base+"inbox/nothing/"), 2, CheckInputExists, Fail},
			{"absent output file: one read, plus the input's", withOut(in(TypeUriFile, base+"inbox/files/a.csv"), TypeUriFile, "azureml://datastores/out/paths/fresh/p.csv"), 2, CheckOutputAbsent, Pass},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				n.Store(0)
				d := c.Check(t.Context(), tt.req)
				subject := I
				if tt.check == CheckOutputAbsent {
					subject = O
				}
				wantCheck(t, d, tt.check, subject, tt.r)
				if got := n.Load(); got != tt.want {
					t.Errorf("storage requests = %d, want %d", got, tt.want)
				}
			})
		}
	})
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	n    *atomic.Int64
	next *http.Client
}

func (c countingTransport) Do(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.Do(r)
}

// checkReason asserts the verdict contract: Reject exactly when a check
// failed, and Reason is then the first failing check.
func checkReason(t *testing.T, d Decision) {
	t.Helper()
	var first *Check
	for i := range d.Checks {
		if d.Checks[i].Result == Fail {
			first = &d.Checks[i]
			break
		}
	}
	switch {
	case first == nil && (d.Verdict != Allow || d.Reason != ""):
		t.Errorf("no check failed, but verdict = %s, reason %q", d.Verdict, d.Reason)
	case first != nil:
		want := first.Name + " " + first.Subject + ": " + first.Reason
		if first.Subject == "" {
			want = first.Name + ": " + first.Reason
		}
		if d.Verdict != Reject || d.Reason != want {
			t.Errorf("verdict, reason = %s, %q; want reject, %q", d.Verdict, d.Reason, want)
		}
	}
}

// assertNoSecret fails if secret appears, raw or escaped, in the decision's
// JSON or in the logs.
func assertNoSecret(t *testing.T, secret string, d Decision, logs string) {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range secretForms(secret) {
		if strings.Contains(string(b), form) {
			t.Errorf("decision holds the secret %q:\n%s", form, b)
		}
		if strings.Contains(logs, form) {
			t.Errorf("logs hold the secret %q:\n%s", form, logs)
		}
	}
}

func secretForms(s string) []string {
	q := strconv.Quote(s)
	return []string{s, strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(s), q[1 : len(q)-1]}
}

// The daemon's own Entra credential reaches storage with a bearer token
// (Azurite over HTTPS with --oauth basic); a token the account refuses is a
// warning naming that identity and the role it needs.
func TestPreflightEntraCredential(t *testing.T) {
	ts := azuritetest.StartOAuth(t)
	keyed, err := azblob.NewClientFromConnectionString(ts.ConnectionString(),
		&azblob.ClientOptions{ClientOptions: policy.ClientOptions{Transport: ts.HTTPClient}})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, keyed, []string{"inbox"}, map[string]string{"inbox/a.csv": "1,2,3"})
	uri := ts.AccountURL() + "inbox/a.csv"
	if !strings.HasPrefix(uri, "https://127.0.0.1:") {
		t.Fatalf("Azurite account URL = %q, want https on loopback", uri)
	}
	check := func(cred *azuritetest.TokenCredential) Decision {
		st := NewStorage(StorageOptions{Credential: cred, Transport: ts.HTTPClient, Accounts: map[string]Account{
			azurite.Account: {BlobEndpoint: ts.AccountURL()}, // Auth: the credential, by default
		}})
		c := NewChecker(CheckerOptions{Storage: st, Identity: "managed identity (test)", Logger: discard()})
		return c.Check(t.Context(), oneInput(TypeUriFile, uri))
	}

	good := &azuritetest.TokenCredential{}
	d := check(good)
	wantCheck(t, d, CheckInputExists, "inputs.data", Pass, "exists")
	wantCheck(t, d, CheckInputNonEmpty, "inputs.data", Pass, "5 bytes")
	if got := good.Scopes(); len(got) == 0 || len(got[0]) != 1 || got[0][0] != "https://storage.azure.com/.default" {
		t.Errorf("token scopes = %q, want [[https://storage.azure.com/.default] ...]", got)
	}

	d = check(&azuritetest.TokenCredential{Audience: "https://management.azure.com"})
	wantCheck(t, d, CheckInputExists, "inputs.data", Warn, "not verified", "refused (HTTP 403",
		"managed identity (test) may not read container \"inbox\"", "Storage Blob Data Reader role on storage account \"devstoreaccount1\"",
		"did not accept the token itself")
	if d.Verdict != Allow {
		t.Errorf("verdict = %s (%s), want allow", d.Verdict, d.Reason)
	}
}
