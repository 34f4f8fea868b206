package blob

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		raw  string
		want Ref
		err  string
	}{
		{raw: "https://acct.blob.core.windows.net/c/a/b.csv",
			want: Ref{URL: "https://acct.blob.core.windows.net/c/a/b.csv", Account: "acct", Container: "c", Name: "a/b.csv"}},
		{raw: "https://acct.dfs.core.windows.net/c/a/b.csv",
			want: Ref{URL: "https://acct.blob.core.windows.net/c/a/b.csv", Account: "acct", Container: "c", Name: "a/b.csv"}},
		{raw: "https://ACCT.privatelink.blob.core.windows.net/c/x",
			want: Ref{URL: "https://acct.blob.core.windows.net/c/x", Account: "acct", Container: "c", Name: "x"}},
		{raw: "https://acct.blob.core.chinacloudapi.cn/c/x%20y.csv",
			want: Ref{URL: "https://acct.blob.core.chinacloudapi.cn/c/x%20y.csv", Account: "acct", Container: "c", Name: "x y.csv"}},
		{raw: "http://127.0.0.1:10000/devstoreaccount1/c/d/e.csv",
			want: Ref{URL: "http://127.0.0.1:10000/devstoreaccount1/c/d/e.csv", Account: "devstoreaccount1", Container: "c", Name: "d/e.csv"}},
		{raw: "http://localhost:10000/devstoreaccount1/c/q%3Fa%23b",
			want: Ref{URL: "http://localhost:10000/devstoreaccount1/c/q%3Fa%23b", Account: "devstoreaccount1", Container: "c", Name: "q?a#b"}},
		{raw: "ftp://acct.blob.core.windows.net/c/x", err: "scheme"},
		{raw: "https://example.com/c/x", err: "host is not"},
		{raw: "https://acct.blob.core.windows.net/c", err: "want /<container>/<blob>"},
		{raw: "https://acct.blob.core.windows.net/c/dir/", err: "empty"},
		{raw: "http://127.0.0.1:1/acct/c", err: "path-style"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, err := ParseURL(tt.raw)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseURL error = %v, want ~%q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseURL (-want +got):\n%s", diff)
			}
			again, err := ParseURL(got.URL)
			if err != nil || again != got {
				t.Errorf("canonical URL does not parse to itself: %+v, %v", again, err)
			}
		})
	}
}

func TestKeyAndFolder(t *testing.T) {
	r, _ := ParseURL("https://acct.blob.core.windows.net/c/in/day%201/f.csv")
	if got, want := Key(r, `"0x8D"`), "https://acct.blob.core.windows.net/c/in/day%201/f.csv@0x8D"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
	if got := r.Folder(); got != "in/day 1/" {
		t.Errorf("Folder = %q", got)
	}
	if got := r.FolderURL(); got != "https://acct.blob.core.windows.net/c/in/day%201/" {
		t.Errorf("FolderURL = %q", got)
	}
	root, _ := ParseURL("https://acct.blob.core.windows.net/c/f.csv")
	if root.Folder() != "" || root.FolderURL() != "https://acct.blob.core.windows.net/c/" {
		t.Errorf("root folder = %q %q", root.Folder(), root.FolderURL())
	}
	if got := UnquoteETag(`W/"0x1"`); got != "0x1" {
		t.Errorf("UnquoteETag = %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	neg := int64(-1)
	tests := []struct {
		cfg  Config
		want []string
	}{
		{Config{}, []string{"account: required", "container: required"}},
		{Config{Account: "a", Container: "c", Glob: "[", Source: "ftp", MinSize: &neg, PollInterval: 10}, []string{"glob:", "source:", "min_size", "poll_interval"}},
		{Config{Account: "a", Container: "c", Batch: &BatchConfig{By: "day", MaxFiles: -1, Marker: "a/b"}}, []string{"batch.by", "batch.max_files", "batch.marker"}},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		for _, w := range tt.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("Validate(%+v) = %v, want ~%q", tt.cfg, err, w)
			}
		}
	}
}
