//go:build linux

package e2e

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/exectrace"
)

// isTool reports whether base is the name of a program shunt and shunt-init must never execute: an
// iptables, nftables or iproute2 tool, or one that loads kernel modules. (The tests themselves run
// them; a call made by a process named shunt* is shunt's, as a forked child keeps its parent's name
// until its exec succeeds.)
func isTool(base string) bool {
	for _, prefix := range []string{"iptables", "ip6tables", "xtables", "ebtables", "arptables"} {
		if strings.HasPrefix(base, prefix) {
			return true
		}
	}
	return slices.Contains([]string{"nft", "ip", "tc", "modprobe"}, base)
}

// traceExecs records the execs of the whole run (root only): stop stops the trace, prints
// "exectrace: N execs of shunt binaries, M execs by shunt processes, K of tools" with the details to w,
// and returns false when a process named shunt* called a tool, when the trace failed, or when a run of
// every test (no -run) started no shunt binary, which would mean the trace missed them.
func traceExecs(w io.Writer) (stop func() bool, err error) {
	tr, err := exectrace.Start()
	if err != nil {
		return nil, fmt.Errorf("exectrace: %w", err)
	}
	return func() bool {
		execs, err := tr.Stop()
		if err != nil {
			fmt.Fprintln(w, "exectrace:", err)
		}
		ok := err == nil
		started := map[string]int{} // base name of a shunt binary → starts
		called := map[string]int{}  // file called by a shunt process → calls
		var tools []exectrace.Exec
		for _, e := range execs {
			if e.Kind == exectrace.KindStart {
				started[filepath.Base(e.Filename)]++
				continue
			}
			called[e.Filename]++
			if isTool(filepath.Base(e.Filename)) {
				tools = append(tools, e)
			}
		}
		fmt.Fprintf(w, "exectrace: %d execs of shunt binaries, %d execs by shunt processes, %d of tools\n",
			sum(started), sum(called), len(tools))
		for _, name := range slices.Sorted(maps.Keys(started)) {
			fmt.Fprintf(w, "exectrace:   started %s: %d\n", name, started[name])
		}
		for _, file := range slices.Sorted(maps.Keys(called)) {
			fmt.Fprintf(w, "exectrace:   called by shunt processes %s: %d\n", file, called[file])
		}
		for _, e := range tools {
			fmt.Fprintf(w, "exectrace: FAIL: a shunt process executed a tool: comm %s pid %d filename %s\n", e.Comm, e.PID, e.Filename)
			ok = false
		}
		if len(started) == 0 && flag.Lookup("test.run").Value.String() == "" {
			fmt.Fprintln(w, "exectrace: FAIL: every test ran and no shunt binary was started: the trace saw nothing")
			ok = false
		}
		return ok
	}, nil
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestIsTool(t *testing.T) {
	for base, want := range map[string]bool{
		"iptables": true, "iptables-nft-restore": true, "ip6tables-legacy-save": true, "xtables-nft-multi": true,
		"ebtables": true, "arptables-nft": true, "nft": true, "ip": true, "tc": true, "modprobe": true,
		"shunt": false, "shunt-init": false, "shunt-cni": false, "ipset": false, "nftables": false, "true": false,
	} {
		if got := isTool(base); got != want {
			t.Errorf("isTool(%q) = %v, want %v", base, got, want)
		}
	}
}
