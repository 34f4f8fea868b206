package datastores

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"
)

// noRetry keeps tests against a closed port fast; the default retry policy
// is exercised by TestCheckUnreachableStorageDefaultRetry.
var noRetry = policy.RetryOptions{MaxRetries: -1}

var unitDatastores = map[string]Datastore{
	"keyed":  {Kind: DatastoreBlob, Account: "acct1", Container: "keyed", Credentials: CredentialsAccountKey},
	"sassy":  {Kind: DatastoreBlob, Account: "acct1", Container: "sassy", Credentials: CredentialsSAS},
	"raw":    {Kind: DatastoreBlob, Account: "acct1", Container: "raw", Credentials: CredentialsNone},
	"lake":   {Kind: DatastoreADLSGen2, Account: "acct2", Filesystem: "lake", Credentials: CredentialsNone},
	"old":    {Kind: DatastoreADLSGen1, Account: "acct3", Credentials: CredentialsNone},
	"broken": {Kind: DatastoreBlob, Account: "acct1", Credentials: CredentialsNone}, // no container
}

const assetURI = "azureml://locations/eastus/workspaces/ws1/data/heart/versions/3"

func oneInput(typ, uri string) Request {
	return Request{Inputs: []IO{{Name: "data", Type: typ, URI: uri}}}
}

// One case per row of the rule table: the Access row the Decision records,
// and the identity checks that follow from it.
func TestCheckAccessFollowsRuleTable(t *testing.T) {
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Logger: discard()})
	const I = "inputs.data"
	tests := []struct {
		name       string
		uri        string
		want       Access
		rbac, posx Result // "" means the check must be absent
		rbacHas    []string
	}{
		{"data store, credentials in store (key)", "azureml://datastores/keyed/paths/x.csv",
			Access{Kind: KindDatastore, Datastore: "keyed", Account: "acct1", CredentialInStore: InStoreYes, CredentialsUsed: CredentialsDatastore, AccessGrantedBy: GrantedByKeyOrSAS},
			Pass, "", []string{"account key"}},
		{"data store, credentials in store (SAS)", "azureml://datastores/sassy/paths/x.csv",
			Access{Kind: KindDatastore, Datastore: "sassy", Account: "acct1", CredentialInStore: InStoreYes, CredentialsUsed: CredentialsDatastore, AccessGrantedBy: GrantedByKeyOrSAS},
			Pass, "", []string{"SAS token"}},
		{"data asset (credentials in store: either)", assetURI,
			Access{Kind: KindDataAsset, CredentialInStore: InStoreUnknown,
				CredentialsUsed: CredentialsDatastore + " if the asset's datastore holds credentials; otherwise " + CredentialsJobAndCompute,
				AccessGrantedBy: GrantedByKeyOrSAS + ", or " + GrantedByRBAC},
			Warn, "", []string{"if the data asset's datastore holds no credentials", "Storage Blob Data Reader"}},
		{"data store, no credentials in store", "azureml://datastores/raw/paths/x.csv",
			Access{Kind: KindDatastore, Datastore: "raw", Account: "acct1", CredentialInStore: InStoreNo, CredentialsUsed: CredentialsJobAndCompute, AccessGrantedBy: GrantedByRBAC},
			Warn, "", []string{"compute cluster's managed identity needs at least Storage Blob Data Reader", `storage account "acct1"`}},
		{"azure blob storage", "https://acct4.blob.core.windows.net/cont/x.csv",
			Access{Kind: KindBlob, Account: "acct4", CredentialInStore: InStoreNotApply, CredentialsUsed: CredentialsJobAndCompute, AccessGrantedBy: GrantedByRBAC},
			Warn, "", []string{"Storage Blob Data Reader", `storage account "acct4"`}},
		{"adls gen1", "adl://acct5.azuredatalakestore.net/x.csv",
			Access{Kind: KindADLSGen1, Account: "acct5", CredentialInStore: InStoreNotApply, CredentialsUsed: CredentialsJobAndCompute, AccessGrantedBy: GrantedByPOSIX},
			"", Warn, nil},
		{"adls gen2", "abfss://lake@acct6.dfs.core.windows.net/x.csv",
			Access{Kind: KindADLSGen2, Account: "acct6", CredentialInStore: InStoreNotApply, CredentialsUsed: CredentialsJobAndCompute, AccessGrantedBy: GrantedByPOSIXAndRBAC},
			Warn, Warn, []string{"Storage Blob Data Reader"}},
		{"adls gen2 datastore without credentials also needs ACLs", "azureml://datastores/lake/paths/x.csv",
			Access{Kind: KindDatastore, Datastore: "lake", Account: "acct2", CredentialInStore: InStoreNo, CredentialsUsed: CredentialsJobAndCompute, AccessGrantedBy: GrantedByRBAC},
			Warn, Warn, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Check(t.Context(), oneInput(TypeUriFile, tt.uri))
			tt.want.Name, tt.want.Role, tt.want.URI, tt.want.Type = "data", "input", tt.uri, TypeUriFile
			if diff := cmp.Diff([]Access{tt.want}, d.Access); diff != "" {
				t.Errorf("Access mismatch (-want +got):\n%s", diff)
			}
			if tt.rbac == "" {
				noCheck(t, d, CheckRBAC, I)
			} else {
				wantCheck(t, d, CheckRBAC, I, tt.rbac, tt.rbacHas...)
			}
			if tt.posx == "" {
				noCheck(t, d, CheckPOSIX, I)
			} else {
				wantCheck(t, d, CheckPOSIX, I, tt.posx, "POSIX ACLs")
			}
			checkReason(t, d)
		})
	}
}

func TestCheckRequestShape(t *testing.T) {
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Logger: discard()})
	file := IO{Name: "data", Type: TypeUriFile, URI: "azureml://datastores/keyed/paths/x.csv"}
	lit := IO{Name: "mode", Type: TypeLiteral, Value: "append"}
	tests := []struct {
		name    string
		req     Request
		verdict Verdict
		check   wantCk
	}{
		{"model: one input", Request{Inputs: []IO{file}}, Allow,
			wantCk{CheckInputCount, "", Pass, nil}},
		{"model: no input", Request{}, Reject,
			wantCk{CheckInputCount, "", Fail, []string{"exactly one data input", "has none"}}},
		{"model: two inputs", Request{Inputs: []IO{file, {Name: "more", Type: TypeUriFile, URI: file.URI}}}, Reject,
			wantCk{CheckInputCount, "", Fail, []string{"has 2 (data, more)"}}},
		{"model: two outputs", Request{Inputs: []IO{file}, Outputs: []IO{{Name: "a", Type: TypeUriFile, URI: "azureml://datastores/keyed/paths/o1.csv"}, {Name: "b", Type: TypeUriFile, URI: "azureml://datastores/keyed/paths/o2.csv"}}}, Reject,
			wantCk{CheckOutputCount, "", Fail, []string{"at most one data output", "(a, b)"}}},
		{"model: literal input", Request{Inputs: []IO{lit}}, Reject,
			wantCk{CheckInputType, "inputs.mode", Fail, []string{"only with pipeline-component deployments"}}},
		{"pipeline: literal and data inputs", Request{Deployment: DeploymentPipeline, Inputs: []IO{file, lit}}, Allow,
			wantCk{CheckInputType, "inputs.mode", Pass, []string{"Literal input to a pipeline deployment"}}},
		{"pipeline: any number of inputs", Request{Deployment: DeploymentPipeline, Inputs: []IO{file, {Name: "b", Type: TypeUriFile, URI: file.URI}}}, Allow,
			wantCk{CheckInputCount, "", Pass, []string{"got 2"}}},
		{"MLTable input", oneInput(TypeMLTable, file.URI), Reject,
			wantCk{CheckInputType, "inputs.data", Fail, []string{"MLTable inputs are not supported"}}},
		{"CLI type name", oneInput("uri_file", file.URI), Reject,
			wantCk{CheckInputType, "inputs.data", Fail, []string{`type "uri_file" is unknown`, "UriFile in the REST API"}}},
		{"type case is forgiven", oneInput("urifolder", "azureml://datastores/keyed/paths/in/"), Allow,
			wantCk{CheckInputType, "inputs.data", Pass, []string{"UriFolder"}}},
		{"literal output", Request{Inputs: []IO{file}, Outputs: []IO{{Name: "o", Type: TypeLiteral}}}, Reject,
			wantCk{CheckOutputType, "outputs.o", Fail, []string{"cannot be Literal"}}},
		{"UriFile naming a folder", oneInput(TypeUriFile, "azureml://datastores/keyed/paths/in/"), Reject,
			wantCk{CheckInputType, "inputs.data", Fail, []string{"type UriFile but the path \"in/\" is a folder"}}},
		{"no type, trailing slash", oneInput("", "azureml://datastores/keyed/paths/in/"), Allow,
			wantCk{CheckInputType, "inputs.data", Pass, []string{"no type given; UriFolder"}}},
		{"no type, file", oneInput("", "azureml://datastores/keyed/paths/in/x.csv"), Allow,
			wantCk{CheckInputType, "inputs.data", Pass, []string{"no type given; UriFile"}}},
		{"unknown deployment kind", Request{Deployment: "online", Inputs: []IO{file}}, Reject,
			wantCk{CheckDeploymentKind, "", Fail, []string{`"online" is unknown`}}},
		{"CLI shorthand input", oneInput(TypeUriFolder, "azureml:mydata:1"), Reject,
			wantCk{CheckClassify, "inputs.data", Fail, []string{"azureml:mydata:1: CLI shorthand is not accepted by the REST API; use azureml://locations/<region>/workspaces/<ws>/data/mydata/versions/1"}}},
		{"empty URI", oneInput(TypeUriFile, ""), Reject,
			wantCk{CheckClassify, "inputs.data", Fail, []string{"URI is empty"}}},
		{"ADLS Gen1 classifies with a warning", oneInput(TypeUriFile, "adl://acct5.azuredatalakestore.net/x.csv"), Allow,
			wantCk{CheckClassify, "inputs.data", Warn, []string{"retired"}}},
		{"data asset is not resolved, only warned about", oneInput(TypeUriFolder, assetURI), Allow,
			wantCk{CheckInputExists, "inputs.data", Warn, []string{"cannot be resolved without Azure ML"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Check(t.Context(), tt.req)
			if d.Verdict != tt.verdict {
				t.Errorf("verdict = %s (%s), want %s; decision:\n%s", d.Verdict, d.Reason, tt.verdict, dump(d))
			}
			wantCheck(t, d, tt.check.name, tt.check.subject, tt.check.result, tt.check.reasonHas...)
			checkReason(t, d)
		})
	}
}

func TestCheckDatastoreDeclared(t *testing.T) {
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Logger: discard()})
	const I = "inputs.data"
	tests := []struct {
		name   string
		uri    string
		result Result
		has    []string
	}{
		{"declared", "azureml://datastores/raw/paths/x.csv", Pass, []string{`datastore "raw" (blob, credentials: none) is account "acct1", container "raw"`}},
		{"names are case-insensitive", "azureml://datastores/RAW/paths/x.csv", Pass, []string{`datastore "raw"`}},
		{"long form resolves too", "azureml://subscriptions/" + testSub + "/resourcegroups/rg/workspaces/ws1/datastores/keyed/paths/x.csv", Pass, []string{`container "keyed"`}},
		{"not declared", "azureml://datastores/rawdata/paths/x.csv", Fail, []string{`datastore "rawdata" is not declared under datastores: in the pipelines file`, "declared: broken, keyed, lake, old, raw, sassy"}},
		{"declared but invalid", "azureml://datastores/broken/paths/x.csv", Fail, []string{`datastore "broken" is declared but invalid`, "container"}},
		{"gen1 datastore is retired", "azureml://datastores/old/paths/x.csv", Warn, []string{"retired"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Check(t.Context(), oneInput(TypeUriFile, tt.uri))
			wantCheck(t, d, CheckDatastoreDeclared, I, tt.result, tt.has...)
			if tt.result == Fail {
				noCheck(t, d, CheckInputExists, I)
			}
			checkReason(t, d)
		})
	}

	_, _, err := ResolveDatastore(Location{Kind: KindDatastore, Datastore: "nope"}, nil)
	if !errors.Is(err, ErrUndeclaredDatastore) || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "none are declared") {
		t.Errorf("ResolveDatastore(undeclared) error = %v, want ErrUndeclaredDatastore naming \"nope\"", err)
	}
}

func TestDatastoreValidate(t *testing.T) {
	tests := []struct {
		name string
		ds   Datastore
		want []string // substrings; nil means valid
	}{
		{"blob", Datastore{Name: "raw", Kind: DatastoreBlob, Account: "acct1", Container: "raw", Credentials: CredentialsNone}, nil},
		{"gen2", Datastore{Name: "lake", Kind: DatastoreADLSGen2, Account: "acct1", Filesystem: "fs1", Credentials: CredentialsSAS}, nil},
		{"gen1", Datastore{Name: "old", Kind: DatastoreADLSGen1, Account: "acct1", Credentials: CredentialsNone}, nil},
		{"everything wrong", Datastore{Name: "bad-name", Kind: "s3", Account: "A", Credentials: "password"},
			[]string{`name "bad-name"`, `kind: "s3" is unknown`, `account: "A"`, `credentials: "password" is unknown`}},
		{"blob with filesystem", Datastore{Name: "x", Kind: DatastoreBlob, Account: "acct1", Container: "ccc", Filesystem: "fs1", Credentials: CredentialsNone}, []string{"filesystem: only for kind adls_gen2"}},
		{"gen2 without filesystem", Datastore{Name: "x", Kind: DatastoreADLSGen2, Account: "acct1", Credentials: CredentialsNone}, []string{"filesystem:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ds.Validate()
			if tt.want == nil {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tt.want)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Validate() = %q, want it to contain %q", err, s)
				}
			}
		})
	}
}

func TestCheckAllowList(t *testing.T) {
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Logger: discard()})
	const I = "inputs.data"
	tests := []struct {
		name   string
		allow  AllowList
		typ    string
		uri    string
		result Result
		has    []string
	}{
		{"no allow-list", AllowList{}, TypeUriFile, "https://acct4.blob.core.windows.net/cont/x.csv", Pass, []string{"no allow-list"}},
		{"account allowed", AllowList{Accounts: []string{"acct4"}}, TypeUriFile, "https://acct4.blob.core.windows.net/cont/x.csv", Pass, nil},
		{"account refused", AllowList{Accounts: []string{"acct1"}}, TypeUriFile, "https://evil1.blob.core.windows.net/cont/x.csv", Fail, []string{`storage account "evil1" is not in the allow-list (accounts: acct1)`}},
		{"datastore resolves to an allowed account", AllowList{Accounts: []string{"acct1"}}, TypeUriFile, "azureml://datastores/raw/paths/x.csv", Pass, nil},
		{"container allowed", AllowList{Containers: []string{"cont"}}, TypeUriFile, "https://acct4.blob.core.windows.net/cont/x.csv", Pass, nil},
		{"account-scoped container refused on another account", AllowList{Containers: []string{"acct1/cont"}}, TypeUriFile, "https://acct4.blob.core.windows.net/cont/x.csv", Fail, []string{`container "cont" of account "acct4"`}},
		{"account-scoped container allowed", AllowList{Containers: []string{"acct4/cont"}}, TypeUriFile, "https://acct4.blob.core.windows.net/cont/x.csv", Pass, nil},
		{"datastore allowed", AllowList{Datastores: []string{"raw"}}, TypeUriFile, "azureml://datastores/raw/paths/x.csv", Pass, nil},
		{"other datastore refused", AllowList{Datastores: []string{"raw"}}, TypeUriFile, "azureml://datastores/keyed/paths/x.csv", Fail, []string{`datastore "keyed" is not in the allow-list (datastores: raw)`}},
		{"storage URL refused by a datastore list", AllowList{Datastores: []string{"raw"}}, TypeUriFile, "https://acct1.blob.core.windows.net/raw/x.csv", Fail, []string{"a storage URL (not a datastore path)"}},
		{"prefix allowed", AllowList{Prefixes: []string{"in/"}}, TypeUriFile, "azureml://datastores/raw/paths/in/x.csv", Pass, nil},
		{"prefix refused", AllowList{Prefixes: []string{"in/"}}, TypeUriFile, "azureml://datastores/raw/paths/other/x.csv", Fail, []string{`path "other/x.csv" is not under an allowed prefix (prefixes: in/)`}},
		{"folder matched with its slash", AllowList{Prefixes: []string{"in/"}}, TypeUriFolder, "azureml://datastores/raw/paths/in", Pass, nil},
		{"container root is not under a prefix", AllowList{Prefixes: []string{"in/"}}, TypeUriFolder, "azureml://datastores/raw/paths/", Fail, []string{"not under an allowed prefix"}},
		{"leading slash in prefix", AllowList{Prefixes: []string{"/in/"}}, TypeUriFile, "azureml://datastores/raw/paths/in/x.csv", Pass, nil},
		{"data asset refused by any list", AllowList{Accounts: []string{"acct1"}}, TypeUriFolder, assetURI, Fail, []string{"known only to Azure ML"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := oneInput(tt.typ, tt.uri)
			req.Allow = tt.allow
			d := c.Check(t.Context(), req)
			wantCheck(t, d, CheckAllowList, I, tt.result, tt.has...)
			if tt.result == Fail {
				// Outside the allow-list, batchd does not touch the storage.
				noCheck(t, d, CheckInputExists, I)
			}
			checkReason(t, d)
		})
	}

	// Outputs are held to the allow-list too.
	req := Request{Inputs: []IO{{Name: "data", Type: TypeUriFile, URI: "azureml://datastores/raw/paths/in/x.csv"}},
		Outputs: []IO{{Name: "score", Type: TypeUriFile, URI: "azureml://datastores/keyed/paths/out.csv"}},
		Allow:   AllowList{Datastores: []string{"raw"}}}
	d := c.Check(t.Context(), req)
	wantCheck(t, d, CheckAllowList, "outputs.score", Fail, `datastore "keyed"`)
}

func TestCheckOutputDatastore(t *testing.T) {
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Logger: discard()})
	const O = "outputs.score"
	tests := []struct {
		name   string
		uri    string
		result Result
		has    []string
	}{
		{"blob datastore", "azureml://datastores/keyed/paths/out/p.csv", Pass, []string{"is a Blob datastore"}},
		{"gen2 datastore", "azureml://datastores/lake/paths/out/p.csv", Fail, []string{`datastore "lake" is adls_gen2`, "only to Blob datastores"}},
		{"storage URL with a matching datastore", "https://acct1.blob.core.windows.net/raw/out/p.csv", Fail, []string{"not to a storage URL", "use azureml://datastores/raw/paths/out/p.csv"}},
		{"storage URL", "https://acct9.blob.core.windows.net/cont/out/p.csv", Fail, []string{"use azureml://datastores/<ds>/paths/<path>"}},
		{"gen1", "adl://acct5.azuredatalakestore.net/out/p.csv", Fail, []string{"ADLS Gen1 cannot take batch job outputs"}},
		{"gen2 URL", "abfss://lake@acct6.dfs.core.windows.net/out/p.csv", Fail, []string{"registered Blob datastore"}},
		{"data asset", assetURI, Fail, []string{"a data asset cannot be a batch job output"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := oneInput(TypeUriFile, "azureml://datastores/keyed/paths/x.csv")
			req.Outputs = []IO{{Name: "score", Type: TypeUriFile, URI: tt.uri}}
			d := c.Check(t.Context(), req)
			wantCheck(t, d, CheckOutputDatastore, O, tt.result, tt.has...)
			checkReason(t, d)
		})
	}
}

// Storage is reached only at configured endpoints; what cannot be reached is
// a warning that says why, never a silent pass.
func TestCheckStorageRouting(t *testing.T) {
	const I = "inputs.data"
	t.Run("no storage", func(t *testing.T) {
		c := NewChecker(CheckerOptions{Datastores: unitDatastores})
		d := c.Check(t.Context(), oneInput(TypeUriFolder, "azureml://datastores/raw/paths/in/"))
		for _, name := range []string{CheckInputExists, CheckInputNonEmpty, CheckFolderFlat} {
			wantCheck(t, d, name, I, Warn, "not checked", "no storage access configured")
		}
		d = c.Check(t.Context(), Request{Inputs: []IO{{Name: "data", Type: TypeUriFile, URI: "azureml://datastores/raw/paths/x.csv"}},
			Outputs: []IO{{Name: "score", Type: TypeUriFile, URI: "azureml://datastores/keyed/paths/o.csv"}}})
		wantCheck(t, d, CheckOutputAbsent, "outputs.score", Warn, "not checked")
	})
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"devstoreaccount1": {BlobEndpoint: "http://127.0.0.1:1/devstoreaccount1/", Auth: AuthAnonymous},
	}})
	c := NewChecker(CheckerOptions{Datastores: unitDatastores, Storage: st})
	tests := []struct {
		name string
		uri  string
		has  []string
	}{
		{"another cloud's endpoint", "https://acct1.blob.core.chinacloudapi.cn/cont/x.csv",
			[]string{"https://acct1.blob.core.chinacloudapi.cn/", "is not where batchd reaches account \"acct1\" (https://acct1.blob.core.windows.net/)"}},
		{"an unconfigured Azurite", "http://127.0.0.1:10000/otheracct/cont/x.csv",
			[]string{"http://127.0.0.1:10000/otheracct/", "batchd contacts only endpoints it is configured for"}},
		{"public endpoint without a credential", "https://acct1.blob.core.windows.net/cont/x.csv",
			[]string{`no client for account "acct1"`, "no credential"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Check(t.Context(), oneInput(TypeUriFile, tt.uri))
			wantCheck(t, d, CheckInputExists, I, Warn, append([]string{"not checked"}, tt.has...)...)
			wantCheck(t, d, CheckInputNonEmpty, I, Warn, "not checked")
			if d.Verdict != Allow {
				t.Errorf("verdict = %s (%s), want allow", d.Verdict, d.Reason)
			}
		})
	}
}

func TestCheckUnreachableStorage(t *testing.T) {
	port := closedPort(t)
	endpoint := "http://127.0.0.1:" + strconv.Itoa(port) + "/devstoreaccount1/"
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"devstoreaccount1": {BlobEndpoint: endpoint, Auth: AuthSharedKey, Key: "a2V5"},
	}, Retry: &noRetry})
	c := NewChecker(CheckerOptions{Storage: st, Datastores: map[string]Datastore{
		"out": {Kind: DatastoreBlob, Account: "devstoreaccount1", Container: "outbox", Credentials: CredentialsAccountKey},
	}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d := c.Check(ctx, oneInput(TypeUriFile, endpoint+"inbox/in/a.csv"))
	wantCheck(t, d, CheckInputExists, "inputs.data", Warn, "not verified: the check was interrupted (context canceled)")

	for _, typ := range []string{TypeUriFile, TypeUriFolder} {
		req := oneInput(typ, endpoint+"inbox/in/a.csv")
		req.Outputs = []IO{{Name: "score", Type: typ, URI: "azureml://datastores/out/paths/o.csv"}}
		d := c.Check(t.Context(), req)
		wantCheck(t, d, CheckInputExists, "inputs.data", Warn, "not verified", `storage account "devstoreaccount1" is not reachable from batchd`, "connection refused")
		wantCheck(t, d, CheckOutputAbsent, "outputs.score", Warn, "not reachable", "connection refused")
		if d.Verdict != Allow {
			t.Errorf("%s: verdict = %s (%s), want allow: unreachable storage is a warning", typ, d.Verdict, d.Reason)
		}
	}
}

// A storage endpoint that accepts connections and never answers: the check
// gives up after ProbeTimeout with a warning.
func TestCheckStorageTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	endpoint := "http://" + l.Addr().String() + "/devstoreaccount1/"
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"devstoreaccount1": {BlobEndpoint: endpoint, Auth: AuthAnonymous},
	}})
	c := NewChecker(CheckerOptions{Storage: st, ProbeTimeout: 200 * time.Millisecond})
	d := c.Check(t.Context(), oneInput(TypeUriFile, endpoint+"inbox/a.csv"))
	wantCheck(t, d, CheckInputExists, "inputs.data", Warn, "did not answer within 200ms")
}

// What a refusal says for each way batchd authenticates (Azurite cannot
// refuse an Entra token for lack of a role, so the wording is checked here).
func TestRefusalNamesIdentityAndRole(t *testing.T) {
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"keyacct": {Auth: AuthSharedKey, Key: "a2V5"},
		"sasacct": {Auth: AuthSAS, SAS: "sv=1&sig=x"},
		"anonact": {Auth: AuthAnonymous},
	}})
	c := NewChecker(CheckerOptions{Storage: st, Identity: "managed identity (client id 1234)"})
	p := probe{state: stRefused, detail: "HTTP 403 AuthorizationPermissionMismatch"}
	tests := []struct {
		account string
		has     []string
	}{
		{"entraacct", []string{"refused (HTTP 403 AuthorizationPermissionMismatch)", "managed identity (client id 1234) may not read container \"cont\" of account \"entraacct\"", "Storage Blob Data Reader role on storage account \"entraacct\""}},
		{"keyacct", []string{`the account key configured for "keyacct"`, "shared-key access is disabled"}},
		{"sasacct", []string{`the SAS token configured for "sasacct"`, "read (r) and list (l)"}},
		{"anonact", []string{"anonymous access", "public read access"}},
	}
	for _, tt := range tests {
		got := c.cannot(p, Location{Account: tt.account, Container: "cont"}, "blob \"x\"")
		for _, s := range tt.has {
			if !strings.Contains(got, s) {
				t.Errorf("refusal for %s = %q, want it to contain %q", tt.account, got, s)
			}
		}
	}
}

// Secrets in the storage configuration never reach a Decision, a log line
// or an error, whatever goes wrong.
func TestSecretsNeverLeak(t *testing.T) {
	const (
		sig = "RECOGNISABLE+SIGNATURE/xyz="
		key = "U0VDUkVULUFDQ09VTlQtS0VZLVJFQ09HTklTQUJMRQ=="
	)
	sasQuery := "sv=2024-01-01&se=2099-01-01&sp=rl&sr=c&sig=" + strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(sig)
	port := strconv.Itoa(closedPort(t))
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"sasacct":  {BlobEndpoint: "http://127.0.0.1:" + port + "/sasacct/", Auth: AuthSAS, SAS: "?" + sasQuery},
		"keyacct":  {BlobEndpoint: "http://127.0.0.1:" + port + "/keyacct/", Auth: AuthSharedKey, Key: key},
		"badkey":   {BlobEndpoint: "http://127.0.0.1:" + port + "/badkey/", Auth: AuthSharedKey, Key: "not base64 " + key},
		"badsasep": {BlobEndpoint: "http://127.0.0.1:" + port + "/bad%zz/", Auth: AuthSAS, SAS: sasQuery},
	}, Retry: &noRetry})
	var logs bytes.Buffer
	c := NewChecker(CheckerOptions{Storage: st, Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Datastores: map[string]Datastore{"ds": {Kind: DatastoreBlob, Account: "sasacct", Container: "outbox", Credentials: CredentialsSAS}}})

	var texts []string
	for _, uri := range []string{
		"http://127.0.0.1:" + port + "/sasacct/inbox/a.csv",
		"http://127.0.0.1:" + port + "/sasacct/inbox/dir/",
		"http://127.0.0.1:" + port + "/keyacct/inbox/a.csv",
		"http://127.0.0.1:" + port + "/badkey/inbox/a.csv",
		"http://127.0.0.1:" + port + "/badsasep/inbox/a.csv",
		"https://acct1.blob.core.windows.net/inbox/a.csv?" + sasQuery, // a SAS in the job URI itself
	} {
		req := oneInput("", uri)
		req.Outputs = []IO{{Name: "o", Type: TypeUriFile, URI: "azureml://datastores/ds/paths/o.csv"}}
		b, err := json.Marshal(c.Check(t.Context(), req))
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, string(b))
		if _, err := Classify(uri); err != nil {
			texts = append(texts, err.Error())
		}
	}
	for _, acct := range []string{"sasacct", "keyacct", "badkey", "badsasep"} {
		if _, err := st.Client(acct); err != nil {
			texts = append(texts, err.Error())
		}
	}
	texts = append(texts, logs.String())
	// The last line of defence, for errors batchd does not recognise.
	texts = append(texts, c.scrub(`Get "http://127.0.0.1/c/x?`+sasQuery+`": unexpected EOF; key `+key))
	all := strings.Join(texts, "\n")
	if !strings.Contains(all, "connection refused") || !strings.Contains(all, "query string") {
		t.Fatalf("the failures under test did not happen; got:\n%s", all)
	}
	for _, secret := range append(secretForms(sig), key, sasQuery) {
		if strings.Contains(all, secret) {
			t.Errorf("secret %q leaked into:\n%s", secret, all)
		}
	}
}

// The same, with Storage's default retry policy: still a warning, after the
// retries.
func TestCheckUnreachableStorageDefaultRetry(t *testing.T) {
	endpoint := "http://127.0.0.1:" + strconv.Itoa(closedPort(t)) + "/devstoreaccount1/"
	st := NewStorage(StorageOptions{Accounts: map[string]Account{
		"devstoreaccount1": {BlobEndpoint: endpoint, Auth: AuthAnonymous},
	}})
	d := NewChecker(CheckerOptions{Storage: st}).Check(t.Context(), oneInput(TypeUriFile, endpoint+"inbox/a.csv"))
	wantCheck(t, d, CheckInputExists, "inputs.data", Warn, "not reachable", "connection refused")
}
