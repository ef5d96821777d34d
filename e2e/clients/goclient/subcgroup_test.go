package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidSubcgroup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"worker", true},
		{"a.b-c_1", true},
		{"", false},
		{".", false},
		{"..", false},
		{"../escape", false},
		{"a/b", false},
		{"/abs", false},
		{"nul\x00", false},
	}
	for _, tt := range tests {
		if err := validSubcgroup(tt.name); (err == nil) != tt.ok {
			t.Errorf("validSubcgroup(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// A name that is not a single element is refused before anything is
// mounted or created.
func TestEnterSubcgroupRefusesPathsFirst(t *testing.T) {
	t.Parallel()
	mnt := filepath.Join(t.TempDir(), "cg")
	if _, err := enterSubcgroup(mnt, "../x"); err == nil || !strings.Contains(err.Error(), "single directory name") {
		t.Fatalf("enterSubcgroup(../x) = %v, want the name refused", err)
	}
	if _, err := os.Stat(mnt); !os.IsNotExist(err) {
		t.Errorf("mount point %s was created for a refused name (stat: %v)", mnt, err)
	}
}
