//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// dpResult is what `pingpong client` prints, with what the rate modes
// (conn, dns) add: the rate and the exchanges that stalled.
type dpResult struct {
	ppResult
	PerSec  float64 `json:"per_s"`
	Stalled int     `json:"stalled"`
	Stall   string  `json:"stall"`
	EAGAINs int     `json:"eagains"`
}

// dpClient runs `pingpong client -addr to args...` in m's pod and cgroup as
// the app's user and returns what it printed; an error when it failed or
// printed no result.
func dpClient(tb testing.TB, m *meshPod, to netip.AddrPort, args ...string) (dpResult, error) {
	tb.Helper()
	argv := append([]string{bins.Path(tb, pkgPingpong), "client", "-addr", to.String()}, args...)
	out, err := m.cg.Exec(m.ns, &appUser, argv...)
	var r dpResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return r, fmt.Errorf("pingpong printed %q: %w", out, errors.Join(err, jerr))
	}
	return r, err
}

// cpuWaker runs one busy loop at the lowest priority (pingpong spin,
// SCHED_IDLE) on each CPU the benchmark may run on, from start to stop:
// a CPU never idles, and whatever wakes up preempts the loop at once.
type cpuWaker struct {
	tb    testing.TB
	cpus  []int
	spins []*spinner
}

type spinner struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// newCPUWaker returns a stopped cpuWaker that is stopped again when tb
// ends, whatever happened.
func newCPUWaker(tb testing.TB) *cpuWaker {
	tb.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		tb.Fatalf("sched_getaffinity: %v", err)
	}
	w := &cpuWaker{tb: tb}
	for cpu := range len(set) * 64 {
		if set.IsSet(cpu) {
			w.cpus = append(w.cpus, cpu)
		}
	}
	tb.Cleanup(w.stop)
	return w
}

// start starts a loop per CPU and returns once each runs.
func (w *cpuWaker) start() {
	w.tb.Helper()
	pp := bins.Path(w.tb, pkgPingpong)
	for _, cpu := range w.cpus {
		stdout := testutil.NewReadyWriter()
		var stderr testutil.LockedBuffer
		s := &spinner{cmd: exec.Command(pp, "spin", "-cpu", strconv.Itoa(cpu)), exited: make(chan struct{})}
		s.cmd.Stdout, s.cmd.Stderr = stdout, &stderr
		if err := s.cmd.Start(); err != nil {
			w.tb.Fatalf("pingpong spin -cpu %d: %v", cpu, err)
		}
		go func() {
			_ = s.cmd.Wait()
			close(s.exited)
		}()
		w.spins = append(w.spins, s)
		select {
		case <-stdout.Ready():
		case <-s.exited:
			w.tb.Fatalf("pingpong spin -cpu %d exited: %s", cpu, stderr.String())
		case <-time.After(testutil.ReadyTimeout):
			w.tb.Fatalf("pingpong spin -cpu %d not ready after %v", cpu, testutil.ReadyTimeout)
		}
	}
}

// stop kills the loops and waits for them.
func (w *cpuWaker) stop() {
	for _, s := range w.spins {
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	w.spins = nil
}

// startForeignProxy starts argv as m's sidecar (-datapath-proxy): as the
// proxy's user in the pod's namespace and cgroup, killed when tb ends. It
// returns once something listens on TCP port 15001 in the pod.
func startForeignProxy(tb testing.TB, m *meshPod, argv []string) {
	tb.Helper()
	cmd := m.cg.Place(m.ns.Command(&proxyUser, argv...))
	var out testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", strings.Join(argv, " "), err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if tb.Failed() {
			tb.Logf("%s in %s:\n%s", strings.Join(argv, " "), m.ns.Name, out.String())
		}
	})
	deadline := time.Now().Add(testutil.ReadyTimeout)
	for {
		ss, err := m.ns.Exec(nil, nil, "ss", "-Htln", "sport = :15001")
		if err == nil && len(bytes.TrimSpace(ss)) > 0 {
			return
		}
		select {
		case <-exited:
			tb.Fatalf("%s exited before listening on :15001:\n%s", strings.Join(argv, " "), out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not listening on :15001 after %v:\n%s", strings.Join(argv, " "), testutil.ReadyTimeout, out.String())
		}
	}
}
