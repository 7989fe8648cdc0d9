//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// progRun is what the kernel counted for one program (BPF_ENABLE_STATS).
type progRun struct {
	runs uint64
	time time.Duration
}

// progRuns reads the run counts and run times of the programs a load pinned
// under pins: the cgroup programs through their link pins, sk_msg through its
// program pin. Without stats enabled the times stay 0.
func progRuns(tb testing.TB, pins string) map[string]progRun {
	tb.Helper()
	entries, err := os.ReadDir(pins)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]progRun{}
	for _, e := range entries {
		path := filepath.Join(pins, e.Name())
		var p *ebpf.Program
		switch {
		case strings.HasPrefix(e.Name(), "link_"):
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				tb.Fatalf("%s: %v", path, err)
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				tb.Fatalf("%s: %v", path, err)
			}
			if p, err = ebpf.NewProgramFromID(info.Program); err != nil {
				tb.Fatalf("%s: program %d: %v", path, info.Program, err)
			}
		case strings.HasPrefix(e.Name(), "prog_"):
			if p, err = ebpf.LoadPinnedProgram(path, nil); err != nil {
				tb.Fatalf("%s: %v", path, err)
			}
		default:
			continue
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			tb.Fatalf("%s: stats: %v", path, err)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(e.Name(), "link_"), "prog_")
		out[name] = progRun{runs: st.RunCount, time: st.Runtime}
	}
	return out
}

// progCost accumulates what the data path's programs cost per connection over
// measured runs: measure enables the kernel's run-time statistics (for as
// long as the returned closer's file descriptor is open, the machine's
// setting left as it was) around run and adds the programs' growth.
type progCost struct {
	pins  string
	conns int
	total map[string]progRun
}

func (c *progCost) measure(tb testing.TB, conns int, run func()) {
	tb.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		tb.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	before := progRuns(tb, c.pins)
	run()
	after := progRuns(tb, c.pins)
	if c.total == nil {
		c.total = map[string]progRun{}
	}
	for name, a := range after {
		t := c.total[name]
		t.runs += a.runs - before[name].runs
		t.time += a.time - before[name].time
		c.total[name] = t
	}
	c.conns += conns
}

// String is one line per program: runs and time per connection.
func (c *progCost) String() string {
	if c.conns == 0 {
		return ""
	}
	names := make([]string, 0, len(c.total))
	for n := range c.total {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	var sum time.Duration
	for _, n := range names {
		t := c.total[n]
		if t.runs == 0 {
			continue
		}
		per := t.time / time.Duration(c.conns)
		sum += per
		fmt.Fprintf(&b, "  %-16s %5.1f runs, %6.2f µs per connection (%4.0f ns per run)\n", n,
			float64(t.runs)/float64(c.conns), float64(per)/1e3, float64(t.time)/float64(t.runs))
	}
	fmt.Fprintf(&b, "  %-16s %18.2f µs per connection\n", "all", float64(sum)/1e3)
	return b.String()
}
