// Package golden compares what a test got with a golden file under testdata; `go test -update`
// rewrites the files instead. It registers the -update flag, so a test package that imports it
// must not define one of its own. Imported by _test.go files only.
package golden

import (
	"flag"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata with what the tests got")

// Check reports, as an error of t, how got differs from the file at path "(-want +got)". With
// -update it first writes got to path. A missing file is fatal.
func Check(t testing.TB, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}
