//go:build !linux

package iptables

import "context"

// Counters is not supported off Linux.
func Counters(context.Context, Options) ([]Counter, error) { return nil, ErrNotSupported }
