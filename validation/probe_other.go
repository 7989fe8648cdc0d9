//go:build !linux

package validation

import (
	"context"
	"errors"
)

// Run is not supported off Linux.
func (v *Probe) Run(context.Context) error { return errNotSupported }

// Client is not supported off Linux.
func Client(context.Context, string) (string, error) { return "", errNotSupported }

var errNotSupported = errors.New("validation runs on Linux only")
