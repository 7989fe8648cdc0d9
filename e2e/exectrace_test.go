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

	"github.com/google/go-cmp/cmp"

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

// traceExecs records the execs of the whole run (root only); stop stops the trace and reports it with
// reportExecs, a run of every test (no -run) being one that must have started shunt.
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
		every := flag.Lookup("test.run").Value.String() == ""
		return reportExecs(w, execs, every) && err == nil
	}, nil
}

// reportExecs prints "exectrace: N execs of shunt binaries, M execs by shunt processes, K of tools"
// and the details to w. It returns false when a process named shunt* (not a Go test binary, *.test)
// called a tool, or when mustStart and no shunt binary started, which would mean that the trace missed
// them.
func reportExecs(w io.Writer, execs []exectrace.Exec, mustStart bool) bool {
	ok := true
	started := map[string]int{} // base name of a shunt binary → starts
	called := map[string]int{}  // file called by a shunt process → calls
	var tools []exectrace.Exec
	for _, e := range execs {
		if strings.HasSuffix(e.Comm, ".test") {
			continue // a test binary of shunt's commands (shunt.test), which may run what tests run
		}
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
	if mustStart && len(started) == 0 {
		fmt.Fprintln(w, "exectrace: FAIL: every test ran and no shunt binary was started: the trace saw nothing")
		ok = false
	}
	return ok
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

func TestReportExecs(t *testing.T) {
	start := exectrace.Exec{Kind: exectrace.KindStart, PID: 10, Comm: "shunt", Filename: "/tmp/e2e/shunt"}
	probe := exectrace.Exec{Kind: exectrace.KindCall, PID: 11, Comm: "shunt", Filename: "/tmp/e2e/shunt"}
	tool := exectrace.Exec{Kind: exectrace.KindCall, PID: 12, Comm: "shunt-init", Filename: "/usr/sbin/iptables-legacy-save"}
	testBinary := exectrace.Exec{Kind: exectrace.KindCall, PID: 13, Comm: "shunt.test", Filename: "/usr/sbin/ip"}
	for _, tc := range []struct {
		name      string
		execs     []exectrace.Exec
		mustStart bool
		want      bool
		wantOut   string
	}{
		{"clean", []exectrace.Exec{start, probe, testBinary}, true, true,
			"exectrace: 1 execs of shunt binaries, 1 execs by shunt processes, 0 of tools\n" +
				"exectrace:   started shunt: 1\nexectrace:   called by shunt processes /tmp/e2e/shunt: 1\n"},
		{"tool", []exectrace.Exec{start, tool}, true, false,
			"exectrace: 1 execs of shunt binaries, 1 execs by shunt processes, 1 of tools\n" +
				"exectrace:   started shunt: 1\nexectrace:   called by shunt processes /usr/sbin/iptables-legacy-save: 1\n" +
				"exectrace: FAIL: a shunt process executed a tool: comm shunt-init pid 12 filename /usr/sbin/iptables-legacy-save\n"},
		{"nothing seen", nil, true, false,
			"exectrace: 0 execs of shunt binaries, 0 execs by shunt processes, 0 of tools\n" +
				"exectrace: FAIL: every test ran and no shunt binary was started: the trace saw nothing\n"},
		{"nothing seen, some tests", nil, false, true,
			"exectrace: 0 execs of shunt binaries, 0 execs by shunt processes, 0 of tools\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			if got := reportExecs(&out, tc.execs, tc.mustStart); got != tc.want {
				t.Errorf("reportExecs = %v, want %v", got, tc.want)
			}
			if diff := cmp.Diff(tc.wantOut, out.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}
