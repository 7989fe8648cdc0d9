//go:build !linux

package iptables

import (
	"context"
)

// Run is not supported off Linux.
func (v *Validation) Run(context.Context) error { return ErrNotSupported }

// ProbeClient is not supported off Linux.
func ProbeClient(context.Context, string) (string, error) { return "", ErrNotSupported }
