package main

import (
	"context"
	"io"
	"strings"
	"testing"
)

// BenchmarkDryRun measures shunt's own work for the injector's default rules: flags, environment,
// config, plan and rendering (no process start-up, no kernel).
func BenchmarkDryRun(b *testing.B) {
	for b.Loop() {
		if err := run(context.Background(), []string{"iptables", "--dry-run", "--ipv6=false"}, strings.NewReader(""), io.Discard, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
