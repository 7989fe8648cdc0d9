package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder is a testing.TB that keeps the errors reported to it.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "case.golden")
	if err := os.WriteFile(path, []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &recorder{TB: t}
	Check(r, path, "a\nb\n")
	if len(r.errs) != 0 {
		t.Errorf("Check of equal text reported %q", r.errs)
	}
	Check(r, path, "a\nc\n")
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "(-want +got)") || !strings.Contains(r.errs[0], path) {
		t.Errorf("Check of different text reported %q, want one diff naming %s", r.errs, path)
	}
}

func TestCheckUpdate(t *testing.T) {
	old := *update
	*update = true
	t.Cleanup(func() { *update = old })
	path := filepath.Join(t.TempDir(), "case.golden")
	Check(t, path, "new\n")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "new\n" {
		t.Errorf("-update wrote %q, want %q", b, "new\n")
	}
}
