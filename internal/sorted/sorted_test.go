package sorted

import (
	"slices"
	"testing"
)

func TestKeys(t *testing.T) {
	got := Keys(map[string]int{"nat": 1, "mangle": 2}, map[string]int{"raw": 3, "nat": 4}, nil)
	if want := []string{"mangle", "nat", "raw"}; !slices.Equal(got, want) {
		t.Errorf("Keys = %q, want %q", got, want)
	}
	if got := Keys[string, int](); len(got) != 0 {
		t.Errorf("Keys of no maps = %q", got)
	}
}
