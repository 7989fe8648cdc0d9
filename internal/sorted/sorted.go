// Package sorted holds the one helper the backends share to walk maps in a stable order.
package sorted

import (
	"cmp"
	"maps"
	"slices"
)

// Keys returns the keys of every map given, sorted, each once: the union of their key sets.
func Keys[K cmp.Ordered, V any](ms ...map[K]V) []K {
	var keys []K
	for _, m := range ms {
		keys = slices.AppendSeq(keys, maps.Keys(m))
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
