//go:build !linux

package nftables

// Counters is only implemented on Linux.
func Counters(Options) ([]Counter, error) { return nil, ErrNotSupported }
