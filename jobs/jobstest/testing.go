package jobstest

// TB is the part of testing.TB that New uses. Declaring it here keeps the
// testing package out of binaries that embed the simulator (batchd-dev).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// New starts a Sim for a test or benchmark (pass its *testing.T or
// *testing.B) and closes it when the test ends. It fails the test if the
// simulator cannot start.
func New(tb TB, opts Options) *Sim {
	tb.Helper()
	s, err := Start(opts)
	if err != nil {
		tb.Fatalf("jobstest.Start: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
