//go:build !linux

package podroute

import (
	"errors"

	"github.com/shuntmesh/shunt/redirect"
)

var errNotLinux = errors.New("routes are only set up on Linux")

// Setup is only implemented on Linux.
func Setup(*redirect.Plan) error { return errNotLinux }

// Cleanup is only implemented on Linux.
func Cleanup() error { return errNotLinux }
