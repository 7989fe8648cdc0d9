//go:build linux

package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/shuntmesh/shunt/cni/shim"
	"github.com/shuntmesh/shunt/internal/testutil/cri"
	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

var criRounds = flag.Int("cri-rounds", 6, "BenchmarkContainerdRunPodSandbox: timed rounds of each configuration")

// BenchmarkContainerdRunPodSandbox measures issue 14's runtime target: on one containerd node, 20
// meshed pods (native-sidecar.yaml, as Istio's injector writes it, created in a real API server)
// started at once, the latency of each RunPodSandbox with the primary network alone (bridge +
// host-local) and with shunt's entry chained after it as `shunt install-cni` writes it (info log,
// the node agent's socket) in two ways: the standalone plugin (the shunt binary, a process per pod
// that reads the pod from the agent's watch and programs the rules itself) and the shim (shunt-cni,
// which hands the command to the node agent: the agent programs the rules in its process). Rounds
// interleave the three conflists (the file rewritten, then containerd's Status waited on until it
// shows the loaded plugins); each round runs the 20 RunPodSandbox calls concurrently and times each,
// then stops and removes the sandboxes untimed. It prints p50 and p99 over all rounds, the spread of
// the rounds' p50s, each configuration's p50 ratio to the primary network alone (overall and the
// median of the rounds' ratios), and shunt's own split of its ADD (pod read, rule programming, whole
// command) from its reports of programmed pods, by what ran it. A fourth conflist is the shim's with the
// pods' namespace excluded: the plugin runs and asks the agent, which programs nothing — the cost of the
// chained plugin itself, apart from the rules. `make bench` runs it once (-benchtime 1x; -cri-rounds
// sets the rounds).
func BenchmarkContainerdRunPodSandbox(b *testing.B) {
	const pods = 20
	rounds := *criRounds // of each configuration, after one untimed warm-up each
	n := newBenchCRINode(b)
	agentSocket, _ := startBenchAgent(b, n.cni)
	reports := listenReports(b)

	primary := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
  {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,
   "ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q}}]}`, nodeSubnet, filepath.Join(n.cni.dataDir, "ipam"))
	entry, err := json.Marshal(map[string]any{ // as install-cni writes it (cni/install.Entry), with its defaults
		"type": "shunt-cni", "kubeconfig": n.cluster.Kubeconfig, "log_level": "info", "log_file": n.cni.logFile,
		"exclude_namespaces": []string{"kube-system"}, "api_timeout": "20s", "iptables_variant": "",
		"report_socket": reports.socket, "agent_socket": agentSocket, "state_dir": filepath.Join(n.cni.dataDir, "pods"),
		"capabilities": map[string]bool{annotationsCap: true},
	})
	if err != nil {
		b.Fatal(err)
	}
	chained := func(pluginType string) string {
		e := strings.Replace(string(entry), `"type":"shunt-cni"`, `"type":"`+pluginType+`"`, 1)
		return strings.Replace(primary, "}]}", "},\n  "+e+"]}", 1)
	}
	configs := []benchConflist{
		{name: "bridge+host-local", plugins: "bridge", conf: primary},
		{name: "+ standalone plugin", plugins: "bridge," + shim.StandaloneName, conf: chained(shim.StandaloneName)},
		{name: "+ shim, agent runs ADD", plugins: "bridge,shunt-cni", conf: chained("shunt-cni")},
		// The same chain with the pods' namespace excluded: the shim runs and asks the agent, which
		// programs nothing — the plugin's own cost apart from the rules the kernel sets up in the pod.
		{name: "+ shim, namespace excluded", plugins: "bridge,shunt-cni",
			conf: strings.Replace(strings.Replace(chained("shunt-cni"), `"exclude_namespaces":["kube-system"]`, `"exclude_namespaces":["bench"]`, 1),
				`"name":"k8s-pod-network"`, `"name":"k8s-pod-network-excluded"`, 1), network: "k8s-pod-network-excluded"},
	}

	fixture := readInjectedPod(b, "native-sidecar.yaml")
	metas := make([]cri.PodMeta, pods)
	for i := range metas {
		pod := fixture.DeepCopy()
		pod.Namespace, pod.Name = "bench", fmt.Sprintf("pod-%02d", i)
		metas[i] = podMeta(n.cni.createPod(b, pod))
	}

	took := make([][]time.Duration, len(configs))     // every call of the timed rounds
	roundP50 := make([][]time.Duration, len(configs)) // each timed round's p50
	attempt := uint32(0)
	loadBefore := loadAverage()
	b.ResetTimer()
	for r := -1; r < rounds; r++ { // round -1: warm-up of each
		if r == 0 {
			reports.reset()
		}
		for c, conf := range configs {
			n.loadConflist(b, conf)
			d := n.runSandboxesAtOnce(b, metas, attempt)
			attempt++
			if r < 0 {
				continue
			}
			took[c] = append(took[c], d...)
			roundP50[c] = append(roundP50[c], pct(d, 50))
		}
	}
	b.StopTimer()

	fmt.Printf("RunPodSandbox latency, containerd, %d meshed pods at once, %d interleaved rounds each (load average before %s, after %s)\n",
		pods, rounds, loadBefore, loadAverage())
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "conflist\tcalls\tp50\tp99\tround p50s min – max\t")
	for c, conf := range configs {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s – %s\t\n", conf.name, len(took[c]), msf(pct(took[c], 50)), msf(pct(took[c], 99)),
			msf(slices.Min(roundP50[c])), msf(slices.Max(roundP50[c])))
	}
	ratios := make([]float64, len(configs))
	pairRatios := make([]float64, len(configs))
	for c := 1; c < len(configs); c++ {
		ratios[c] = float64(pct(took[c], 50)) / float64(pct(took[0], 50))
		// Each round ran the configurations back to back under about the same load: the median of
		// the rounds' ratios is less noisy.
		pairs := make([]float64, rounds)
		for r := range pairs {
			pairs[r] = float64(roundP50[c][r]) / float64(roundP50[0][r])
		}
		pairRatios[c] = median(pairs)
		fmt.Fprintf(w, "p50 %s / %s\t\t%.3f×\t\t(rounds' ratios, median %.3f×)\t\n", configs[c].name, configs[0].name, ratios[c], pairRatios[c])
	}
	for _, inAgent := range []bool{false, true} {
		runner := "standalone plugin"
		if inAgent {
			runner = "node agent"
		}
		api, program, total, sources := reports.split(func(a addReport) bool { return a.InAgent == inAgent && a.Outcome == "programmed" })
		for _, s := range []struct {
			what string
			ds   []time.Duration
		}{
			{"pod read", api},
			{"rule programming", program},
			{"whole command", total},
		} {
			fmt.Fprintf(w, "  ADD in the %s: %s\t%d\t%s\t%s\t\t\n", runner, s.what, len(s.ds), msf(pct(s.ds, 50)), msf(pct(s.ds, 99)))
		}
		fmt.Fprintf(w, "  ADD in the %s: pod read from (source: ADDs)\t\t%v\t\t\t\n", runner, sources)
	}
	w.Flush()
	for c, conf := range configs {
		fmt.Printf("round p50s, %s:", conf.name)
		for _, d := range roundP50[c] {
			fmt.Printf(" %.0f", float64(d)/float64(time.Millisecond))
		}
		fmt.Println(" ms")
	}
	for c, unit := range []string{"plain", "standalone", "shim", "shim-excluded"} {
		b.ReportMetric(float64(pct(took[c], 50))/float64(time.Millisecond), "p50-ms-"+unit)
		b.ReportMetric(float64(pct(took[c], 99))/float64(time.Millisecond), "p99-ms-"+unit)
		if c > 0 {
			b.ReportMetric(ratios[c], "p50-ratio-"+unit)
			b.ReportMetric(pairRatios[c], "round-p50-ratio-"+unit)
		}
	}
}

// benchConflist is a network containerd loads: the conflist file's content and the plugin types its
// Status shows once loaded.
type benchConflist struct {
	name, plugins, conf string
	network             string // the conflist's network name; empty is k8s-pod-network
}

// newBenchCRINode is newCRINode for a benchmark: containerd and a kube-apiserver in the node's
// namespace, the plugins installed as they are (no recording wrapper) and no conflist yet.
func newBenchCRINode(b *testing.B) *criNode {
	im := images(b)
	n := &criNode{binDir: b.TempDir(), confDir: b.TempDir(), cni: &cniNode{dataDir: b.TempDir()}}
	n.cni.logFile = filepath.Join(n.cni.dataDir, "shunt-cni.log")
	n.Node = cri.Start(b, cri.Options{CNIBinDir: n.binDir, CNIConfDir: n.confDir, Images: im})
	n.cluster = kube.Start(b, kube.InNetNS(n.NetNS.Path()))
	n.cni.ns, n.cni.cluster = n.NetNS, n.cluster
	if err := os.Chmod(n.binDir, 0o755); err != nil {
		b.Fatal(err)
	}
	// As install-cni installs them: the shim, and the shunt binary as the standalone plugin beside it.
	copyFile(b, bins.Path(b, pkgShim), filepath.Join(n.binDir, "shunt-cni"))
	copyFile(b, bins.Path(b, pkgShunt), filepath.Join(n.binDir, shim.StandaloneName))
	for _, pkg := range []string{pkgBridge, pkgHostLocal, pkgLoopback} {
		src := bins.Path(b, pkg)
		if err := os.Symlink(src, filepath.Join(n.binDir, filepath.Base(src))); err != nil {
			b.Fatal(err)
		}
	}
	return n
}

// loadConflist writes conf as the node's conflist and waits until containerd's Status shows it
// loaded.
func (n *criNode) loadConflist(b *testing.B, conf benchConflist) {
	if err := os.WriteFile(filepath.Join(n.confDir, "10-k8s-pod-network.conflist"), []byte(conf.conf), 0o644); err != nil {
		b.Fatal(err)
	}
	n.WaitNetworkReady(b)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var c struct {
			Networks []struct {
				Config struct {
					Name    string
					Plugins []struct{ Network struct{ Type string } }
				}
			}
		}
		raw := n.CNIConfig(b)
		if err := json.Unmarshal([]byte(raw), &c); err != nil {
			b.Fatalf("containerd's CNI configuration: %v\n%s", err, raw)
		}
		var types []string
		network := cmp.Or(conf.network, "k8s-pod-network")
		for _, nw := range c.Networks {
			if nw.Config.Name != network && nw.Config.Name != "cni-loopback" {
				types = append(types, "network "+nw.Config.Name)
			}
			for _, p := range nw.Config.Plugins {
				if p.Network.Type != "loopback" { // containerd's own network
					types = append(types, p.Network.Type)
				}
			}
		}
		if strings.Join(types, ",") == conf.plugins {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("containerd loads %v, not %s:\n%s", types, conf.plugins, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runSandboxesAtOnce runs a sandbox for each pod concurrently, as attempt, and returns each
// RunPodSandbox call's latency; then it stops and removes them.
func (n *criNode) runSandboxesAtOnce(b *testing.B, metas []cri.PodMeta, attempt uint32) []time.Duration {
	cfgs := make([]*runtimeapi.PodSandboxConfig, len(metas))
	for i, m := range metas {
		cfgs[i] = n.SandboxConfig(m)
		cfgs[i].Metadata.Attempt = attempt
		if err := os.MkdirAll(cfgs[i].LogDirectory, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	took := make([]time.Duration, len(cfgs))
	ids := make([]string, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), cri.CallTimeout)
			defer cancel()
			start := time.Now()
			r, err := n.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
			took[i] = time.Since(start)
			if errs[i] = err; err == nil {
				ids[i] = r.PodSandboxId
			}
		})
	}
	wg.Wait()
	for i, id := range ids {
		if id == "" {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), cri.CallTimeout)
			defer cancel()
			if _, err := n.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
				errs[i] = fmt.Errorf("StopPodSandbox: %w", err)
			} else if _, err := n.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
				errs[i] = fmt.Errorf("RemovePodSandbox: %w", err)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			b.Fatalf("sandbox %s/%s: %v", metas[i].Namespace, metas[i].Name, err)
		}
	}
	return took
}

// readInjectedPod reads a pod of injectedDir.
func readInjectedPod(b *testing.B, file string) *corev1.Pod {
	data, err := os.ReadFile(filepath.Join(injectedDir, file))
	if err != nil {
		b.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(data, pod); err != nil {
		b.Fatalf("%s: %v", file, err)
	}
	return pod
}

// benchReports collects shunt-cni's ADD reports (cni.Report) from its report socket.
// loadAverage returns the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
