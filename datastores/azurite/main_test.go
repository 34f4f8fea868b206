package azurite_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The launcher's goroutines (output reader, waiter) must end with the
// process. Idle keep-alive connections of HTTP transports are not leaks.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
