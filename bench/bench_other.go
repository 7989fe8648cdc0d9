//go:build !linux

package main

import (
	"context"
	"time"
)

func measure(context.Context, *options) ([]result, error) { return nil, ErrNotSupported }

func measureRerun(context.Context, *options) (map[string]map[string][]time.Duration, error) {
	return nil, ErrNotSupported
}
