//go:build !linux

package iptables

import (
	"context"
	"log/slog"
	"time"

	"github.com/shuntmesh/shunt/redirect"
)

// Validation is not supported off Linux.
type Validation struct {
	Config        redirect.Config
	ProbePort     uint16
	Timeout       time.Duration
	NetNS         string
	Logger        *slog.Logger
	ClientCommand []string
}

// Run is not supported off Linux.
func (v *Validation) Run(context.Context) error { return ErrNotSupported }

// ProbeClient is not supported off Linux.
func ProbeClient(context.Context, string) (string, error) { return "", ErrNotSupported }
