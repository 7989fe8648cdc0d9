//go:build !linux

package main

import "context"

func measure(context.Context, *options) ([]result, error) { return nil, ErrNotSupported }
