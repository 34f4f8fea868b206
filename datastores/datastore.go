package datastores

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrUndeclaredDatastore is matched by the error ResolveDatastore returns
// for a datastore the pipelines file does not declare.
var ErrUndeclaredDatastore = errors.New("datastore not declared")

// Validate reports every problem of a declared datastore, each naming its
// field. Name must be set.
func (d Datastore) Validate() error {
	var errs []error
	if !datastoreRE.MatchString(d.Name) {
		errs = append(errs, fmt.Errorf("name %q is not a valid datastore name (letters, digits and _)", d.Name))
	}
	switch d.Kind {
	case DatastoreBlob:
		if !containerRE.MatchString(d.Container) {
			errs = append(errs, fmt.Errorf("container: %q is not a valid container name", d.Container))
		}
		if d.Filesystem != "" {
			errs = append(errs, fmt.Errorf("filesystem: only for kind %s", DatastoreADLSGen2))
		}
	case DatastoreADLSGen2:
		if !containerRE.MatchString(d.Filesystem) {
			errs = append(errs, fmt.Errorf("filesystem: %q is not a valid filesystem name", d.Filesystem))
		}
		if d.Container != "" {
			errs = append(errs, fmt.Errorf("container: only for kind %s", DatastoreBlob))
		}
	case DatastoreADLSGen1:
		if d.Container != "" || d.Filesystem != "" {
			errs = append(errs, fmt.Errorf("container/filesystem: not used by kind %s", DatastoreADLSGen1))
		}
	default:
		errs = append(errs, fmt.Errorf("kind: %q is unknown: want %s, %s or %s", d.Kind, DatastoreBlob, DatastoreADLSGen2, DatastoreADLSGen1))
	}
	if !accountRE.MatchString(d.Account) {
		errs = append(errs, fmt.Errorf("account: %q is not a valid storage account name (3-24 lower-case letters and digits)", d.Account))
	}
	switch d.Credentials {
	case CredentialsAccountKey, CredentialsSAS, CredentialsNone:
	default:
		errs = append(errs, fmt.Errorf("credentials: %q is unknown: want %s, %s or %s", d.Credentials, CredentialsAccountKey, CredentialsSAS, CredentialsNone))
	}
	return errors.Join(errs...)
}

// ResolveDatastore fills a datastore Location's Account and Container from
// the declared datastore it names, and returns that datastore. Azure ML
// datastore names are case-insensitive: an exact match wins, then a
// case-insensitive one. A Location of another kind is returned unchanged.
// The error names the datastore: it is not declared (ErrUndeclaredDatastore),
// or its declaration is invalid.
func ResolveDatastore(loc Location, declared map[string]Datastore) (Location, Datastore, error) {
	if loc.Kind != KindDatastore {
		return loc, Datastore{}, nil
	}
	name := loc.Datastore
	ds, ok := declared[name]
	if !ok {
		var matches []string
		for k := range declared {
			if strings.EqualFold(k, name) {
				matches = append(matches, k)
			}
		}
		slices.Sort(matches)
		if len(matches) > 0 {
			name, ds, ok = matches[0], declared[matches[0]], true
		}
	}
	if !ok {
		known := make([]string, 0, len(declared))
		for k := range declared {
			known = append(known, k)
		}
		slices.Sort(known)
		list := "none are declared"
		if len(known) > 0 {
			list = "declared: " + strings.Join(known, ", ")
		}
		return loc, Datastore{}, fmt.Errorf("datastore %q is not declared under datastores: in the pipelines file (%s): %w", loc.Datastore, list, ErrUndeclaredDatastore)
	}
	if ds.Name == "" {
		ds.Name = name
	}
	if err := ds.Validate(); err != nil {
		return loc, Datastore{}, fmt.Errorf("datastore %q is declared but invalid: %w", name, err)
	}
	loc.Account = ds.Account
	switch ds.Kind {
	case DatastoreBlob:
		loc.Container = ds.Container
	case DatastoreADLSGen2:
		loc.Container = ds.Filesystem
	}
	return loc, ds, nil
}
