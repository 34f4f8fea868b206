package datastores

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzClassify: Classify never panics; an error always is a *URIError that
// shows the URI, names the offending part and hides any query string; an
// accepted URI always yields a Location whose parts obey the rules the
// checker relies on. The seed corpus is testdata/fuzz/FuzzClassify (run by
// plain `go test`); `make fuzz` explores from it.
func FuzzClassify(f *testing.F) {
	f.Fuzz(func(t *testing.T, uri string) {
		loc, err := Classify(uri)
		if err != nil {
			checkURIError(t, uri, err)
			return
		}
		if loc.URI != uri {
			t.Errorf("Classify(%q).URI = %q, want the input", uri, loc.URI)
		}
		if strings.ContainsAny(uri, "?#") {
			t.Errorf("Classify(%q) accepted a query string or fragment", uri)
		}
		switch loc.Kind {
		case KindDatastore:
			if !datastoreRE.MatchString(loc.Datastore) {
				t.Errorf("Classify(%q).Datastore = %q, not a datastore name", uri, loc.Datastore)
			}
		case KindDataAsset:
			if !assetRE.MatchString(loc.Asset) || (loc.AssetVersion == "") == (loc.AssetLabel == "") {
				t.Errorf("Classify(%q) asset %q version %q label %q: want a name and exactly one of version, label", uri, loc.Asset, loc.AssetVersion, loc.AssetLabel)
			}
		case KindBlob, KindADLSGen2:
			if !accountRE.MatchString(loc.Account) || !containerRE.MatchString(loc.Container) {
				t.Errorf("Classify(%q) account %q container %q: not valid names", uri, loc.Account, loc.Container)
			}
			if ep := loc.BlobEndpoint(); !strings.HasPrefix(ep, "http") || !strings.HasSuffix(ep, "/") {
				t.Errorf("Classify(%q).BlobEndpoint() = %q, want an http(s) URL ending in /", uri, ep)
			}
		case KindADLSGen1:
			if !accountRE.MatchString(loc.Account) || loc.Warning == "" {
				t.Errorf("Classify(%q) Gen1 account %q warning %q", uri, loc.Account, loc.Warning)
			}
		default:
			t.Errorf("Classify(%q).Kind = %q, want a storage kind", uri, loc.Kind)
		}
		// No segment of the path may escape a prefix or be ambiguous.
		segs := strings.Split(loc.Path, "/")
		for i, s := range segs {
			if s == "." || s == ".." || (s == "" && i != len(segs)-1) || strings.ContainsRune(s, '\\') {
				t.Errorf("Classify(%q).Path = %q has segment %q", uri, loc.Path, s)
			}
		}
		if want := loc.Path == "" || strings.HasSuffix(loc.Path, "/"); loc.Kind != KindDataAsset && loc.Folder != want {
			t.Errorf("Classify(%q).Folder = %t for path %q", uri, loc.Folder, loc.Path)
		}
		// Deterministic.
		again, err := Classify(uri)
		if err != nil {
			t.Fatalf("Classify(%q) second time: %v", uri, err)
		}
		if diff := cmp.Diff(loc, again); diff != "" {
			t.Errorf("Classify(%q) not deterministic (-first +second):\n%s", uri, diff)
		}
	})
}
