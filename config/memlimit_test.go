package config

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultMemoryLimit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content string
		want          int64
		ok, err       bool
	}{
		{"a limit", "1073741824\n", 966367638, true, false},
		{"no limit", "max\n", 0, false, false},
		{"no file", "", 0, false, false},
		{"garbage", "lots\n", 0, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if tt.name != "no file" {
				if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, ok, err := DefaultMemoryLimit(path)
			if got != tt.want || ok != tt.ok || (err != nil) != tt.err {
				t.Errorf("DefaultMemoryLimit = %d, %v, %v; want %d, %v, error %v", got, ok, err, tt.want, tt.ok, tt.err)
			}
		})
	}
}
