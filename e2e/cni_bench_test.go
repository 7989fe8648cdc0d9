//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// addReport is the part of shunt-cni's report (see cni.Report) the benchmark reads.
type addReport struct {
	Command        string  `json:"command"`
	Name           string  `json:"name"`
	Outcome        string  `json:"outcome"`
	APISeconds     float64 `json:"api_seconds"`
	ProgramSeconds float64 `json:"program_seconds"`
	TotalSeconds   float64 `json:"total_seconds"`
}

// BenchmarkCNIAdd measures CNI ADD on a node with a real API server: the wall time of the runtime's
// whole ADD (bridge + host-local + shunt-cni, as libcni runs it) for meshed pods one at a time and
// 50 at once, next to the same ADD without shunt-cni; and, from shunt-cni's own reports, the API
// round trip apart from rule programming. `make bench` runs it once (-benchtime 1x) and it prints
// p50 and p99 of each.
func BenchmarkCNIAdd(b *testing.B) {
	const serial, concurrent = 100, 50
	n := newCNINode(b)
	sock := filepath.Join(b.TempDir(), "reports.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := os.Chmod(sock, 0o666); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	reports := map[string]addReport{}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			var r addReport
			if json.Unmarshal(buf[:k], &r) == nil && r.Command == "ADD" {
				mu.Lock()
				reports[r.Name] = r
				mu.Unlock()
			}
		}
	}()
	withShunt := n.conflist(b, `"kubeconfig":"`+n.cluster.Kubeconfig+`","report_socket":"`+sock+`"`)
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
		for _, p := range pods { // keep the node's namespace count steady between rounds
			if err := n.del(b, list, p); err != nil {
				b.Fatalf("DEL %s: %v", p.name, err)
			}
		}
		return took
	}
	split := func(prefix string, count int) (api, program, total []time.Duration) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			api, program, total = nil, nil, nil
			for i := range count {
				r, ok := reports[fmt.Sprintf("%s-%03d", prefix, i)]
				if !ok {
					continue
				}
				api = append(api, seconds(r.APISeconds))
				program = append(program, seconds(r.ProgramSeconds))
				total = append(total, seconds(r.TotalSeconds))
			}
			mu.Unlock()
			if len(total) == count || time.Now().After(deadline) {
				return api, program, total
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	b.ResetTimer()
	run("warm", withShunt, 5, false)
	plainSerial := run("plain-serial", plain, serial, false)
	shuntSerial := run("serial", withShunt, serial, false)
	plainConc := run("plain-conc", plain, concurrent, true)
	shuntConc := run("conc", withShunt, concurrent, true)
	b.StopTimer()

	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "CNI ADD latency (node with a real kube-apiserver; libcni runs the conflist)\t\t\t")
	fmt.Fprintln(w, "what\tpods\tp50\tp99\t")
	row := func(what string, ds []time.Duration) {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t\n", what, len(ds), msf(pct(ds, 50)), msf(pct(ds, 99)))
	}
	row("bridge+host-local, 1 at a time", plainSerial)
	row("bridge+host-local+shunt-cni, 1 at a time", shuntSerial)
	api, prog, total := split("serial", serial)
	row("  shunt-cni: API read (GET pod)", api)
	row("  shunt-cni: rule programming", prog)
	row("  shunt-cni: whole command (in process)", total)
	row("bridge+host-local, 50 at once", plainConc)
	row("bridge+host-local+shunt-cni, 50 at once", shuntConc)
	api, prog, total = split("conc", concurrent)
	row("  shunt-cni: API read (GET pod)", api)
	row("  shunt-cni: rule programming", prog)
	row("  shunt-cni: whole command (in process)", total)
	w.Flush()
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
