package jobs

import "testing"

func TestCanonicalURI(t *testing.T) {
	tests := []struct{ a, b string }{
		{"azureml://datastores/ds/paths/in/a.csv",
			"azureml://subscriptions/00000000-0000-0000-0000-00000000cafe/resourcegroups/rg/workspaces/ws/datastores/ds/paths/in/a.csv"},
		{"https://Acct.Blob.Core.Windows.Net/c/in/", "https://acct.blob.core.windows.net/c/in"},
		{"https://acct.blob.core.windows.net/c/my%20file.csv", "https://acct.blob.core.windows.net/c/my file.csv"},
		{"AZUREML://datastores/ds/paths/x/", "azureml://datastores/ds/paths/x"},
	}
	for _, tt := range tests {
		if a, b := CanonicalURI(tt.a), CanonicalURI(tt.b); a != b {
			t.Errorf("CanonicalURI(%q) = %q, CanonicalURI(%q) = %q; want equal", tt.a, a, tt.b, b)
		}
	}
	different := []struct{ a, b string }{
		{"azureml://datastores/ds/paths/in/a.csv", "azureml://datastores/other/paths/in/a.csv"},
		{"https://acct.blob.core.windows.net/c/A.csv", "https://acct.blob.core.windows.net/c/a.csv"}, // blob names are case-sensitive
		{"azureml://locations/westeurope/workspaces/ws/data/d/versions/1", "azureml://locations/westeurope/workspaces/ws/data/d/versions/2"},
	}
	for _, tt := range different {
		if CanonicalURI(tt.a) == CanonicalURI(tt.b) {
			t.Errorf("CanonicalURI(%q) == CanonicalURI(%q), want different", tt.a, tt.b)
		}
	}
}

func TestEndpointAzureName(t *testing.T) {
	tests := []struct{ uri, want string }{
		{"https://heart-scorer.westeurope.inference.ml.azure.com/jobs", "heart-scorer"},
		{"https://127.0.0.1:8443/ep-score/jobs", "ep-score"},
		{"https://gateway.example.com/", ""},
	}
	for _, tt := range tests {
		if got := (Endpoint{ScoringURI: tt.uri}).AzureName(); got != tt.want {
			t.Errorf("AzureName(%q) = %q, want %q", tt.uri, got, tt.want)
		}
	}
}
