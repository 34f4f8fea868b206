package config

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CgroupMemoryMax is where cgroup v2 puts the memory limit of the
// process's group (a systemd unit's MemoryMax=, a container's limit).
const CgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// DefaultMemoryLimit is the Go memory limit batchd sets when GOMEMLIMIT is
// not: 90% of the cgroup's memory limit, so that the garbage collector
// works harder before the kernel's OOM killer would act, and gives memory
// back after a burst. ok is false without a limit (no cgroup v2, "max").
// The 10% left is for what the Go runtime does not count (thread stacks
// outside the heap, the run index's file pages).
func DefaultMemoryLimit(path string) (limit int64, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("memory limit: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" || s == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false, fmt.Errorf("memory limit: %s holds %q, not a number of bytes", path, s)
	}
	return n / 10 * 9, true, nil
}
