package datastores

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// seedRows reads the rule table from the source text (a copy of
// shared/seeds/batch-endpoint-authorization.txt): the rows between the
// "Data input type | ..." header and the first line that is not a row.
func seedRows(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("testdata/batch-endpoint-authorization.txt")
	if err != nil {
		t.Fatalf("read seed: %v", err)
	}
	var rows [][]string
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Data input type |"):
			in = true
		case in && strings.HasPrefix(line, "---"):
		case in && strings.Count(line, "|") >= 4:
			var cells []string
			for c := range strings.SplitSeq(strings.TrimSuffix(line, "|"), "|") {
				cells = append(cells, strings.TrimSpace(c))
			}
			rows = append(rows, cells)
		case in:
			return rows
		}
	}
	return rows
}

// The table must be the seed's, row for row and in order. The seed writes
// "Access Key or SAS" once and "Access key or SAS" once; the table uses one
// spelling, so cells compare case-insensitively.
func TestRulesMatchSeed(t *testing.T) {
	rows := seedRows(t)
	if len(rows) != 7 {
		t.Fatalf("seed table has %d rows, want 7", len(rows))
	}
	if len(Rules) != len(rows) {
		t.Fatalf("len(Rules) = %d, want %d (the seed's rows)", len(Rules), len(rows))
	}
	inStore := map[string]string{"yes": InStoreYes, "no": InStoreNo, "not apply": InStoreNotApply}
	credentials := map[string]string{
		"data store's credentials in the workspace":                     CredentialsDatastore,
		"identity of the job + managed identity of the compute cluster": CredentialsJobAndCompute,
	}
	for i, row := range rows {
		r := Rules[i]
		got := []string{r.InputType, r.CredentialInStore, r.CredentialsUsed, strings.ToLower(r.AccessGrantedBy)}
		want := []string{row[0], inStore[strings.ToLower(row[1])], credentials[strings.ToLower(row[2])], strings.ToLower(row[3])}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Rules[%d] differs from seed row %q (-want +got):\n%s", i, row, diff)
		}
	}
}

func TestLookupRule(t *testing.T) {
	tests := []struct {
		name     string
		kind     Kind
		inStore  string
		wantOK   bool
		wantUsed string
		wantBy   string
	}{
		{"data store with credentials", KindDatastore, InStoreYes, true, CredentialsDatastore, GrantedByKeyOrSAS},
		{"data asset with credentials", KindDataAsset, InStoreYes, true, CredentialsDatastore, GrantedByKeyOrSAS},
		{"data store without credentials", KindDatastore, InStoreNo, true, CredentialsJobAndCompute, GrantedByRBAC},
		{"data asset without credentials", KindDataAsset, InStoreNo, true, CredentialsJobAndCompute, GrantedByRBAC},
		{"azure blob", KindBlob, InStoreNotApply, true, CredentialsJobAndCompute, GrantedByRBAC},
		{"adls gen1", KindADLSGen1, InStoreNotApply, true, CredentialsJobAndCompute, GrantedByPOSIX},
		{"adls gen2", KindADLSGen2, InStoreNotApply, true, CredentialsJobAndCompute, GrantedByPOSIXAndRBAC},
		{"literal has no row", KindLiteral, InStoreNotApply, false, "", ""},
		{"blob with credentials is not a row", KindBlob, InStoreYes, false, "", ""},
		{"datastore with n/a is not a row", KindDatastore, InStoreNotApply, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := LookupRule(tt.kind, tt.inStore)
			if ok != tt.wantOK || r.CredentialsUsed != tt.wantUsed || r.AccessGrantedBy != tt.wantBy {
				t.Errorf("LookupRule(%s, %s) = (%q, %q, %t), want (%q, %q, %t)", tt.kind, tt.inStore,
					r.CredentialsUsed, r.AccessGrantedBy, ok, tt.wantUsed, tt.wantBy, tt.wantOK)
			}
		})
	}
}
