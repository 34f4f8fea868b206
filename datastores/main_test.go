package datastores

import (
	"testing"

	"go.uber.org/goleak"
)

// Checker starts no goroutine; Azurite's launcher goroutines end with the
// process. Idle keep-alive connections of the SDK's shared HTTP transport
// are not leaks.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
