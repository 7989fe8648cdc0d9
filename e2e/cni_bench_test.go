//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/cni/libcni"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/shuntmesh/shunt/cni/shim"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// startBenchAgent runs `shunt install-cni` in node n as the node agent only (the plugin is run from
// the benchmark's own conflist): admin access, no health server, repair or drift audit. It returns the
// agent's socket, once it is there, and its pid; the benchmark's end kills it.
func startBenchAgent(b *testing.B, n *cniNode) (socket string, pid int) {
	b.Helper()
	dir := b.TempDir()
	socket = filepath.Join(dir, "agent.sock")
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("unused"), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := n.ns.AgentCommand(bins.Path(b, pkgShunt), "install-cni", "--shim", bins.Path(b, pkgShim),
		"--cni-bin-dir", filepath.Join(dir, "bin"), "--cni-net-dir", filepath.Join(dir, "net"),
		"--token-file", token, "--ca-file", "", "--api-server", n.cluster.URL, "--kubeconfig", n.cluster.Kubeconfig,
		"--node-name", nodeName, "--agent-socket", socket, "--report-socket", "", "--health-addr", "",
		"--repair-mode", "off", "--audit-interval", "0", "--state-dir", filepath.Join(dir, "pods"))
	var logs testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if b.Failed() {
			b.Logf("node agent log:\n%s", tail(logs.String(), 40))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			return socket, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatalf("no agent socket after 30s:\n%s", tail(logs.String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addReport is the part of shunt-cni's report (see cni.Report) the benchmark reads.
type addReport struct {
	Command        string  `json:"command"`
	Name           string  `json:"name"`
	Outcome        string  `json:"outcome"`
	APISeconds     float64 `json:"api_seconds"`
	ProgramSeconds float64 `json:"program_seconds"`
	TotalSeconds   float64 `json:"total_seconds"`
	PodSource      string  `json:"pod_source"`
	InAgent        bool    `json:"in_agent"`
}

// benchReports are the ADD reports shunt-cni sends to a benchmark's report socket.
type benchReports struct {
	socket string
	mu     sync.Mutex
	adds   []addReport
}

// listenReports listens on a report socket until the benchmark ends.
func listenReports(b *testing.B) *benchReports {
	r := &benchReports{socket: filepath.Join(b.TempDir(), "reports.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: r.socket, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	if err := os.Chmod(r.socket, 0o666); err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			var a addReport
			if json.Unmarshal(buf[:k], &a) == nil && a.Command == "ADD" {
				r.mu.Lock()
				r.adds = append(r.adds, a)
				r.mu.Unlock()
			}
		}
	}()
	return r
}

func (r *benchReports) reset() {
	r.mu.Lock()
	r.adds = nil
	r.mu.Unlock()
}

// split returns the pod read, rule programming and whole command of the ADDs since reset that keep
// accepts (all when nil), and how many read the pod from each source.
func (r *benchReports) split(keep func(addReport) bool) (api, program, total []time.Duration, sources map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sources = map[string]int{}
	for _, a := range r.adds {
		if keep != nil && !keep(a) {
			continue
		}
		sources[a.PodSource]++
		api = append(api, seconds(a.APISeconds))
		program = append(program, seconds(a.ProgramSeconds))
		total = append(total, seconds(a.TotalSeconds))
	}
	return api, program, total, sources
}

// named returns the last ADD report of the pod name.
func (r *benchReports) named(name string) (addReport, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.adds) - 1; i >= 0; i-- {
		if r.adds[i].Name == name {
			return r.adds[i], true
		}
	}
	return addReport{}, false
}

// BenchmarkCNIAdd measures CNI ADD on a node with a real API server: the wall time of the runtime's
// whole ADD (bridge + host-local + shunt-cni, as libcni runs it) for meshed pods one at a time and
// 100 at once, next to the same ADD without shunt-cni; shunt-cni reads each pod from the API server
// (no agent), or from the node agent (`shunt install-cni --agent-socket`, which watches the node's
// pods), or the shim hands the whole ADD to the node agent (shunt-cni as install-cni installs it).
// From shunt-cni's own reports: the pod read apart from rule programming; from the API server's audit
// log: the plugin's own API requests per ADD; the agent's RSS holding the 100 pods; and the CPU time
// per ADD of the plugin processes and the agent together (a figure the machine's load hardly moves).
// `make bench` runs it once (-benchtime 1x) and it prints p50 and p99 of each.
func BenchmarkCNIAdd(b *testing.B) {
	const serial, concurrent = 100, 100
	n := newCNINode(b)
	agentSocket, agentPid := startBenchAgent(b, n)
	reports := listenReports(b)
	sock := reports.socket
	withShunt := n.conflist(b, `"kubeconfig":"`+n.cluster.Kubeconfig+`","report_socket":"`+sock+`","agent_socket":""`)
	withAgent := n.conflist(b, `"kubeconfig":"`+n.cluster.Kubeconfig+`","report_socket":"`+sock+`","agent_socket":"`+agentSocket+`"`)
	// The shim beside the standalone plugin, as install-cni installs them, under a type of its own.
	copyFile(b, bins.Path(b, pkgShim), filepath.Join(n.binDir, "shunt-cni-shim"))
	copyFile(b, bins.Path(b, pkgShunt), filepath.Join(n.binDir, shim.StandaloneName))
	withShim, err := libcni.ConfListFromBytes(bytes.Replace(withAgent.Bytes, []byte(`"type": "shunt-cni"`), []byte(`"type": "shunt-cni-shim"`), 1))
	if err != nil {
		b.Fatal(err)
	}
	var agentRSS int64
	cpu := map[string]time.Duration{} // per serial run: CPU of the plugins libcni ran and of the agent
	plain, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"plain","plugins":[
		{"type":"bridge","bridge":"cni1","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/16"}]],"dataDir":%q}}]}`,
		filepath.Join(n.dataDir, "ipam-plain"))))
	if err != nil {
		b.Fatal(err)
	}

	run := func(prefix string, list *libcni.NetworkConfigList, count int, parallel bool) []time.Duration {
		pods := make([]*cniPod, count)
		for i := range pods {
			pods[i] = n.podSandbox(b, meshedPod("bench", fmt.Sprintf("%s-%03d", prefix, i), nil))
		}
		took := make([]time.Duration, count)
		errs := make([]error, count)
		cpuBefore := childrenCPU(b) + processCPU(b, agentPid)
		one := func(i int) {
			start := time.Now()
			errs[i] = n.add(b, list, pods[i])
			took[i] = time.Since(start)
		}
		if parallel {
			var wg sync.WaitGroup
			for i := range pods {
				wg.Go(func() { one(i) })
			}
			wg.Wait()
		} else {
			for i := range pods {
				one(i)
			}
		}
		for i, err := range errs {
			if err != nil {
				b.Fatalf("ADD %s: %v", pods[i].name, err)
			}
		}
		cpu[prefix] = childrenCPU(b) + processCPU(b, agentPid) - cpuBefore
		if list == withAgent && parallel {
			agentRSS = vmRSS(b, agentPid) // holding this round's pods
		}
		for _, p := range pods { // keep the node's namespace and pod counts steady between rounds
			if err := n.del(b, list, p); err != nil {
				b.Fatalf("DEL %s: %v", p.name, err)
			}
			if err := n.cluster.Client.CoreV1().Pods(p.namespace).Delete(context.Background(), p.name,
				metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
				b.Fatalf("delete pod %s: %v", p.name, err)
			}
		}
		return took
	}
	split := func(prefix string, count int) (api, program, total []time.Duration) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			api, program, total = nil, nil, nil
			for i := range count {
				r, ok := reports.named(fmt.Sprintf("%s-%03d", prefix, i))
				if !ok {
					continue
				}
				api = append(api, seconds(r.APISeconds))
				program = append(program, seconds(r.ProgramSeconds))
				total = append(total, seconds(r.TotalSeconds))
			}
			if len(total) == count || time.Now().After(deadline) {
				return api, program, total
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	b.ResetTimer()
	run("warm", withShunt, 5, false)
	run("warm-agent", withAgent, 5, false)
	plainSerial := run("plain-serial", plain, serial, false)
	shuntSerial := run("serial", withShunt, serial, false)
	agentSerial := run("agent-serial", withAgent, serial, false)
	run("warm-shim", withShim, 5, false)
	shimSerial := run("shim-serial", withShim, serial, false)
	plainConc := run("plain-conc", plain, concurrent, true)
	shuntConc := run("conc", withShunt, concurrent, true)
	agentConc := run("agent-conc", withAgent, concurrent, true)
	shimConc := run("shim-conc", withShim, concurrent, true)
	b.StopTimer()

	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "CNI ADD latency (node with a real kube-apiserver; libcni runs the conflist)\t\t\t")
	fmt.Fprintln(w, "what\tpods\tp50\tp99\t")
	row := func(what string, ds []time.Duration) {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t\n", what, len(ds), msf(pct(ds, 50)), msf(pct(ds, 99)))
	}
	perADD := func(prefix string, count int) string {
		return fmt.Sprintf("%.2f", float64(pluginRequests(b, n.cluster, prefix))/float64(count))
	}
	rows := func(what string, count int, plainD, apiD, agentD, shimD []time.Duration, prefix string) {
		row("bridge+host-local, "+what, plainD)
		row("bridge+host-local+shunt-cni, no agent, "+what, apiD)
		api, prog, total := split(prefix, count)
		row("  shunt-cni: pod read (GET from the API server)", api)
		row("  shunt-cni: rule programming", prog)
		row("  shunt-cni: whole command (in process)", total)
		fmt.Fprintf(w, "  shunt-cni: its API requests per ADD\t%d\t%s\t\t\n", count, perADD(prefix, count))
		row("bridge+host-local+shunt-cni, node agent, "+what, agentD)
		api, prog, total = split("agent-"+prefix, count)
		row("  shunt-cni: pod read (from the agent)", api)
		row("  shunt-cni: rule programming", prog)
		row("  shunt-cni: whole command (in process)", total)
		fmt.Fprintf(w, "  shunt-cni: its API requests per ADD\t%d\t%s\t\t\n", count, perADD("agent-"+prefix, count))
		row("bridge+host-local+shim, the agent runs ADD, "+what, shimD)
		api, prog, total = split("shim-"+prefix, count)
		row("  in the agent: pod read (its watch)", api)
		row("  in the agent: rule programming", prog)
		row("  in the agent: whole command", total)
		fmt.Fprintf(w, "  shunt-cni: its API requests per ADD\t%d\t%s\t\t\n", count, perADD("shim-"+prefix, count))
	}
	rows("1 at a time", serial, plainSerial, shuntSerial, agentSerial, shimSerial, "serial")
	rows(fmt.Sprintf("%d at once", concurrent), concurrent, plainConc, shuntConc, agentConc, shimConc, "conc")
	// CPU per ADD, whatever the machine's load: the plugins' processes (libcni's children: bridge,
	// host-local, and shunt-cni's shim or standalone plugin) and the node agent's.
	fmt.Fprintln(w, "CPU per ADD, 1 at a time (plugin processes + node agent)\t\tCPU\tshunt's share\t")
	plainCPU := cpu["plain-serial"] / serial
	for _, c := range []struct{ what, prefix string }{
		{"bridge+host-local", "plain-serial"},
		{"+ standalone plugin, pod from the API server", "serial"},
		{"+ standalone plugin, pod from the agent", "agent-serial"},
		{"+ shim, the agent runs ADD", "shim-serial"},
	} {
		per := cpu[c.prefix] / serial
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t\n", c.what, serial, msf(per), msf(per-plainCPU))
	}
	fmt.Fprintf(w, "node agent RSS holding %d pods\t\t%.1f MiB\t\t\n", concurrent, float64(agentRSS)/(1<<20))
	w.Flush()
}

// childrenCPU is the CPU time of this process's children that have been waited for (libcni waits for
// every plugin it runs).
func childrenCPU(b testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the CPU time process pid has used, all threads, from /proc/PID/stat (clock ticks of
// 10 ms: read it over many operations).
func processCPU(b testing.TB, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name may hold spaces: the fields after it start past the last ')'.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime: fields 14 and 15 of proc(5)
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
