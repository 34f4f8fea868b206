package datastores

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testSub = "00000000-1111-2222-3333-444444444444"

func TestClassifyAccepts(t *testing.T) {
	tests := []struct {
		name string
		uri  string
		want Location
	}{
		{"datastore short, file", "azureml://datastores/raw/paths/in/x.csv",
			Location{Kind: KindDatastore, Scheme: "azureml", Datastore: "raw", Path: "in/x.csv"}},
		{"datastore short, folder", "azureml://datastores/raw/paths/in/",
			Location{Kind: KindDatastore, Scheme: "azureml", Datastore: "raw", Path: "in/", Folder: true}},
		{"datastore short, root", "azureml://datastores/workspaceblobstore/paths/",
			Location{Kind: KindDatastore, Scheme: "azureml", Datastore: "workspaceblobstore", Folder: true}},
		{"datastore short, percent-encoded path", "azureml://datastores/raw/paths/in/my%20file.csv",
			Location{Kind: KindDatastore, Scheme: "azureml", Datastore: "raw", Path: "in/my file.csv"}},
		{"datastore long", "azureml://subscriptions/" + testSub + "/resourcegroups/rg-1/workspaces/ws1/datastores/raw/paths/a/b.csv",
			Location{Kind: KindDatastore, Scheme: "azureml", Subscription: testSub, ResourceGroup: "rg-1", Workspace: "ws1", Datastore: "raw", Path: "a/b.csv"}},
		{"datastore long, resourceGroups spelling", "azureml://subscriptions/" + testSub + "/resourceGroups/rg/workspaces/ws1/datastores/raw/paths/a/",
			Location{Kind: KindDatastore, Scheme: "azureml", Subscription: testSub, ResourceGroup: "rg", Workspace: "ws1", Datastore: "raw", Path: "a/", Folder: true}},
		{"datastore ARM id form, with warning", "azureml:/subscriptions/" + testSub + "/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws1/datastores/raw/paths/p/",
			Location{Kind: KindDatastore, Scheme: "azureml", Subscription: testSub, ResourceGroup: "rg", Workspace: "ws1", Datastore: "raw", Path: "p/", Folder: true, Warning: armDatastoreWarning}},
		{"data asset version", "azureml://locations/eastus/workspaces/ws1/data/heart-data/versions/3",
			Location{Kind: KindDataAsset, Scheme: "azureml", Region: "eastus", Workspace: "ws1", Asset: "heart-data", AssetVersion: "3"}},
		{"data asset labels/latest", "azureml://locations/eastus/workspaces/ws1/data/heart-data/versions/labels/latest",
			Location{Kind: KindDataAsset, Scheme: "azureml", Region: "eastus", Workspace: "ws1", Asset: "heart-data", AssetLabel: "latest"}},
		{"data asset ARM id", "/subscriptions/" + testSub + "/resourcegroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws1/data/heart/versions/2",
			Location{Kind: KindDataAsset, Scheme: "arm", Subscription: testSub, ResourceGroup: "rg", Workspace: "ws1", Asset: "heart", AssetVersion: "2"}},
		{"data asset azureml: ARM id", "azureml:/subscriptions/" + testSub + "/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws1/data/heart/versions/2",
			Location{Kind: KindDataAsset, Scheme: "azureml", Subscription: testSub, ResourceGroup: "rg", Workspace: "ws1", Asset: "heart", AssetVersion: "2"}},
		{"blob https folder", "https://azuremlexampledata.blob.core.windows.net/data/heart-disease-uci/data",
			Location{Kind: KindBlob, Scheme: "https", Account: "azuremlexampledata", Container: "data", Path: "heart-disease-uci/data",
				EndpointScheme: "https", EndpointHost: "azuremlexampledata.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"blob https container root", "https://acct1.blob.core.windows.net/cont",
			Location{Kind: KindBlob, Scheme: "https", Account: "acct1", Container: "cont", Folder: true,
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"blob https $root, port 443, upper-case host", "HTTPS://ACCT1.BLOB.CORE.WINDOWS.NET:443/$root/x.csv",
			Location{Kind: KindBlob, Scheme: "https", Account: "acct1", Container: "$root", Path: "x.csv",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"blob https percent-encoded", "https://acct1.blob.core.windows.net/cont/in/a%20b%2Bc.csv",
			Location{Kind: KindBlob, Scheme: "https", Account: "acct1", Container: "cont", Path: "in/a b+c.csv",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"wasbs", "wasbs://data@acct1.blob.core.windows.net/in/x.csv",
			Location{Kind: KindBlob, Scheme: "wasbs", Account: "acct1", Container: "data", Path: "in/x.csv",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"abfss", "abfss://fs1@acct1.dfs.core.windows.net/in/",
			Location{Kind: KindADLSGen2, Scheme: "abfss", Account: "acct1", Container: "fs1", Path: "in/", Folder: true,
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"https dfs", "https://acct1.dfs.core.windows.net/fs1/in/x.parquet",
			Location{Kind: KindADLSGen2, Scheme: "https", Account: "acct1", Container: "fs1", Path: "in/x.parquet",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.windows.net", Suffix: "core.windows.net"}},
		{"adls gen1, retired warning", "adl://acct1.azuredatalakestore.net/in/x.csv",
			Location{Kind: KindADLSGen1, Scheme: "adl", Account: "acct1", Path: "in/x.csv", Warning: Gen1Retired}},
		{"azure china blob", "https://acct1.blob.core.chinacloudapi.cn/cont/x.csv",
			Location{Kind: KindBlob, Scheme: "https", Account: "acct1", Container: "cont", Path: "x.csv",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.chinacloudapi.cn", Suffix: "core.chinacloudapi.cn"}},
		{"azure us government abfss", "abfss://fs1@acct1.dfs.core.usgovcloudapi.net/x.csv",
			Location{Kind: KindADLSGen2, Scheme: "abfss", Account: "acct1", Container: "fs1", Path: "x.csv",
				EndpointScheme: "https", EndpointHost: "acct1.blob.core.usgovcloudapi.net", Suffix: "core.usgovcloudapi.net"}},
		{"azurite", "http://127.0.0.1:10000/devstoreaccount1/inbox/a.csv",
			Location{Kind: KindBlob, Scheme: "http", Account: "devstoreaccount1", Container: "inbox", Path: "a.csv",
				EndpointScheme: "http", EndpointHost: "127.0.0.1:10000", PathStyle: true}},
		{"azurite localhost https folder", "https://localhost:10001/devstoreaccount1/cont/",
			Location{Kind: KindBlob, Scheme: "https", Account: "devstoreaccount1", Container: "cont", Folder: true,
				EndpointScheme: "https", EndpointHost: "localhost:10001", PathStyle: true}},
		{"azurite ipv6", "http://[::1]:10000/devstoreaccount1/cont/a",
			Location{Kind: KindBlob, Scheme: "http", Account: "devstoreaccount1", Container: "cont", Path: "a",
				EndpointScheme: "http", EndpointHost: "[::1]:10000", PathStyle: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Classify(tt.uri)
			if err != nil {
				t.Fatalf("Classify(%q) error: %v", tt.uri, err)
			}
			tt.want.URI = tt.uri
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Classify(%q) mismatch (-want +got):\n%s", tt.uri, diff)
			}
		})
	}
}

func TestBlobEndpoint(t *testing.T) {
	tests := []struct{ uri, want string }{
		{"https://acct1.blob.core.windows.net/cont/x", "https://acct1.blob.core.windows.net/"},
		{"abfss://fs1@acct1.dfs.core.windows.net/x", "https://acct1.blob.core.windows.net/"},
		{"http://127.0.0.1:10000/devstoreaccount1/cont/x", "http://127.0.0.1:10000/devstoreaccount1/"},
		{"azureml://datastores/raw/paths/x", ""},
		{"adl://acct1.azuredatalakestore.net/x", ""},
	}
	for _, tt := range tests {
		loc, err := Classify(tt.uri)
		if err != nil {
			t.Fatalf("Classify(%q): %v", tt.uri, err)
		}
		if got := loc.BlobEndpoint(); got != tt.want {
			t.Errorf("Classify(%q).BlobEndpoint() = %q, want %q", tt.uri, got, tt.want)
		}
	}
}

func TestClassifyRejects(t *testing.T) {
	arm := "/subscriptions/" + testSub + "/resourcegroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws1/"
	tests := []struct {
		name     string
		uri      string
		wantPart string // "" means the whole URI
		wantMsg  string // substring of Error()
	}{
		{"empty", "", "", "URI is empty"},
		{"CLI shorthand name:version", "azureml:mydata:1", "",
			"azureml:mydata:1: CLI shorthand is not accepted by the REST API; use azureml://locations/<region>/workspaces/<ws>/data/mydata/versions/1"},
		{"CLI shorthand name@latest", "azureml:mydata@latest", "",
			"azureml:mydata@latest: CLI shorthand is not accepted by the REST API; use azureml://locations/<region>/workspaces/<ws>/data/mydata/versions/labels/latest"},
		{"CLI shorthand with slash", "azureml:/mydata@latest", "", "use azureml://locations/<region>/workspaces/<ws>/data/mydata/versions/labels/latest"},
		{"datastore without paths", "azureml://datastores/raw", "", `ends before "paths"`},
		{"datastore without path", "azureml://datastores/raw/paths", "", "path is missing after paths/"},
		{"datastore bad name", "azureml://datastores/my-ds/paths/x", "my-ds", `datastore name "my-ds" is not valid`},
		{"datastore path keyword misspelt", "azureml://datastores/raw/path/x", "path", `found "path" where "paths" belongs`},
		{"azureml registries", "azureml://registries/reg/models/m/versions/1", "registries", "is not a known azureml:// form"},
		{"azureml nothing", "azureml://", "", "nothing after azureml://"},
		{"asset other label", "azureml://locations/eastus/workspaces/ws1/data/heart/versions/labels/stable", "stable", `label "stable" is not supported`},
		{"asset extra segment", "azureml://locations/eastus/workspaces/ws1/data/heart/versions/3/extra", "extra", `unexpected "extra" after the version`},
		{"asset trailing slash", "azureml://locations/eastus/workspaces/ws1/data/heart/versions/3/", "/", `unexpected "/" after the version`},
		{"long form bad subscription", "azureml://subscriptions/not-a-guid/resourcegroups/rg/workspaces/ws1/datastores/raw/paths/x", "not-a-guid", `subscription "not-a-guid" is not valid`},
		{"ARM without version", arm + "data/heart", "", "versions"},
		{"ARM other resource", arm + "models/m/versions/1", "models", "is not a data asset or datastore"},
		{"SAS query", "https://acct1.blob.core.windows.net/cont/x.csv?sv=2024-01-01&sig=SECRETSIG", "?<redacted>", "query string"},
		{"password in URL", "https://user:pw@acct1.blob.core.windows.net/cont/x", "<redacted>@", "user information"},
		{"plain http to Azure", "http://acct1.blob.core.windows.net/cont/x", "http", "plain http is accepted only for Azurite"},
		{"not storage", "https://example.com/cont/x", "example.com", "is not an Azure Storage endpoint"},
		{"file service", "https://acct1.file.core.windows.net/share/x", "acct1.file.core.windows.net", "is not an Azure Storage endpoint"},
		{"unknown cloud", "https://acct1.blob.core.cloudapi.de/cont/x", "acct1.blob.core.cloudapi.de", "core.chinacloudapi.cn"},
		{"bad account", "https://acct_1.blob.core.windows.net/cont/x", "acct_1", `account name "acct_1" is not valid`},
		{"no container", "https://acct1.blob.core.windows.net/", "", "container is missing"},
		{"bad container", "https://acct1.blob.core.windows.net/Bad_Container/x", "Bad_Container", `container "Bad_Container" is not valid`},
		{"dot-dot segment", "https://acct1.blob.core.windows.net/cont/in/../secret.csv", "..", `path segment ".." is not allowed`},
		{"encoded dot-dot segment", "azureml://datastores/raw/paths/in/%2E%2E/x", "..", `path segment ".." is not allowed`},
		{"empty segment", "https://acct1.blob.core.windows.net/cont/a//b", "//", "empty segment"},
		{"bad escape", "https://acct1.blob.core.windows.net/cont/a%2", "%2", "bad percent-encoding"},
		{"backslash", `https://acct1.blob.core.windows.net/cont/a\b`, `\`, `holds "\\"`},
		{"encoded NUL", "https://acct1.blob.core.windows.net/cont/a%00b", "\x00", "path holds character"},
		{"port", "https://acct1.blob.core.windows.net:8443/cont/x", ":8443", `port "8443" is not accepted`},
		{"wasb unencrypted", "wasb://cont@acct1.blob.core.windows.net/x", "wasb", "use wasbs://"},
		{"abfs unencrypted", "abfs://fs1@acct1.dfs.core.windows.net/x", "abfs", "use abfss://"},
		{"wasbs without container", "wasbs://acct1.blob.core.windows.net/x", "", "container is missing"},
		{"abfss on blob host", "abfss://fs1@acct1.blob.core.windows.net/x", "acct1.blob.core.windows.net", "needs a <account>.dfs.<suffix> host"},
		{"gen1 wrong host", "adl://acct1.azuredatalakestore.com/x", "acct1.azuredatalakestore.com", "is not an ADLS Gen1 host"},
		{"gen1 over https", "https://acct1.azuredatalakestore.net/x", "acct1.azuredatalakestore.net", "use adl://"},
		{"s3", "s3://bucket/x", "s3", `scheme "s3" is not supported`},
		{"no scheme", "in/x.csv", "", "no scheme"},
		{"azurite without account", "http://127.0.0.1:10000/", "", "account is missing"},
		{"azurite without container", "http://127.0.0.1:10000/devstoreaccount1", "", "container is missing"},
		{"azurite bad port", "http://127.0.0.1:99999/devstoreaccount1/cont/x", ":99999", `port "99999" is not valid`},
		{"private IP", "http://10.0.0.5:10000/devstoreaccount1/cont/x", "http", "plain http is accepted only for Azurite on loopback"},
		{"private IP https", "https://10.0.0.5/devstoreaccount1/cont/x", "10.0.0.5", "is not an Azure Storage endpoint"},
		{"wasbs on loopback", "wasbs://cont@127.0.0.1:10000/x", "127.0.0.1", "is not supported"},
		{"leading space", " https://acct1.blob.core.windows.net/cont/x", "", "white space"},
		{"inner space", "https://acct1.blob.core.windows.net/cont/a b", " ", "percent-encode it"},
		{"fragment", "https://acct1.blob.core.windows.net/cont/x#frag", "#frag", "fragment"},
		{"too long", "https://acct1.blob.core.windows.net/cont/" + strings.Repeat("a", maxURILen), "", "the limit is 4096"},
		{"blob name too long", "https://acct1.blob.core.windows.net/cont/" + strings.Repeat("a", 1025), "", "a blob name is at most 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc, err := Classify(tt.uri)
			if err == nil {
				t.Fatalf("Classify(%q) = %+v, want an error", tt.uri, loc)
			}
			checkURIError(t, tt.uri, err)
			var ue *URIError
			errors.As(err, &ue)
			wantPart := tt.wantPart
			if wantPart == "" {
				wantPart = redactURI(tt.uri)
			}
			if ue.Part != wantPart {
				t.Errorf("Classify(%q) Part = %q, want %q", tt.uri, ue.Part, wantPart)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Classify(%q) error = %q, want it to contain %q", tt.uri, err, tt.wantMsg)
			}
		})
	}
}

// checkURIError asserts what every Classify error promises: it wraps
// ErrInvalidURI, is a *URIError, shows the URI and names the offending part,
// and holds no query string.
func checkURIError(t *testing.T, uri string, err error) {
	t.Helper()
	if !errors.Is(err, ErrInvalidURI) {
		t.Errorf("Classify(%q) error %v does not match ErrInvalidURI", uri, err)
	}
	var ue *URIError
	if !errors.As(err, &ue) {
		t.Fatalf("Classify(%q) error %T is not a *URIError", uri, err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, showURI(redactURI(uri))+": ") {
		t.Errorf("Classify(%q) error %q does not start with the URI", uri, msg)
	}
	if ue.Part != ue.URI && !strings.Contains(msg, strconv.Quote(ue.Part)) {
		t.Errorf("Classify(%q) error %q does not name its part %q", uri, msg, ue.Part)
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		if q := uri[i+1:]; len(q) >= 8 && !strings.Contains(uri[:i], q) && strings.Contains(msg, q) {
			t.Errorf("Classify(%q) error %q shows the query string", uri, msg)
		}
	}
}

func TestRedactURI(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://a.blob.core.windows.net/c/x?sv=1&sig=abc", "https://a.blob.core.windows.net/c/x?<redacted>"},
		{"https://u:p@a.blob.core.windows.net/c/x", "https://<redacted>@a.blob.core.windows.net/c/x"},
		{"wasbs://c@a.blob.core.windows.net/x", "wasbs://c@a.blob.core.windows.net/x"},
		{"azureml://datastores/d/paths/x", "azureml://datastores/d/paths/x"},
	}
	for _, tt := range tests {
		if got := redactURI(tt.in); got != tt.want {
			t.Errorf("redactURI(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
