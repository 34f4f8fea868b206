package blob

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/datastores/azurite"
)

var leakOpts = []goleak.Option{
	// azcore's shared HTTP transport keeps idle connections per process.
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
}

// One Azurite serves the package's tests (each uses its own container):
// starting it takes seconds.
var (
	azOnce sync.Once
	azSrv  *azurite.Server
	azErr  error
	azSeq  atomic.Int64
)

// sharedAzurite returns the package's Azurite and a fresh container on it.
// A test that cannot start Azurite fails; it never skips.
func sharedAzurite(t *testing.T) (*azurite.Server, *azblob.Client, string) {
	t.Helper()
	azOnce.Do(func() { azSrv, azErr = azurite.Start(context.Background(), azurite.Options{}) })
	if azErr != nil {
		t.Fatalf("azurite: %v", azErr)
	}
	c, err := azblob.NewClientFromConnectionString(azSrv.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("c%03d", azSeq.Add(1))
	if _, err := c.CreateContainer(context.Background(), name, nil); err != nil {
		t.Fatalf("create container: %v", err)
	}
	return azSrv, c, name
}

func TestMain(m *testing.M) {
	code := m.Run()
	if azSrv != nil {
		_ = azSrv.Close()
	}
	if code == 0 {
		if err := goleak.Find(leakOpts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
