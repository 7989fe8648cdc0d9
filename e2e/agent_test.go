//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

// pluginUserAgent is the user agent of the plugin's own API requests (cni.PluginType); the agent's are
// shunt-install-cni's.
const pluginUserAgent = "shunt-cni"

// TestAgent runs `shunt install-cni` as the node agent, as the DaemonSet does, and ADDs meshed pods
// through the conflist it installed: while the agent is up the plugin makes no API request at all —
// the API server's audit log shows none with the plugin's user agent — and a pod created just before
// its ADD (racing the agent's watch) is served, read by the agent once at most. With the agent
// killed (its socket left behind: connection refused) and then its socket gone, ADDs still work, each
// through one GET of the plugin's own.
func TestAgent(t *testing.T) {
	const pods = 30
	n := newCNINode(t)
	ctx := context.Background()
	token, tokenFile, caFile := installerAccess(t, n)
	createNode(t, n)
	binDir, netDir := hostCNIDirs(t)
	writeFile(t, filepath.Join(netDir, "10-bridge.conflist"),
		[]byte(fmt.Sprintf(primaryConflist, filepath.Join(n.dataDir, "ipam-agent"))), 0o644)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	health := "127.0.0.1:19105"
	agent := startInstallCNI(t, n, append(installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, health),
		"--agent-socket", socket))
	web := n.nodeHTTP()
	metrics := func() string {
		resp, err := web.Get("http://" + health + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	var list *libcni.NetworkConfigList
	waitFor(t, "shunt-cni installed", func() bool {
		var err error
		list, err = libcni.LoadConfList(netDir, "k8s-pod-network")
		return err == nil && len(list.Plugins) == 2
	})
	var entry struct {
		AgentSocket string `json:"agent_socket"`
	}
	if err := json.Unmarshal(chainedAfterBridge(t, list.Bytes).Plugins[1].Bytes, &entry); err != nil || entry.AgentSocket != socket {
		t.Fatalf("the installed entry names the agent's socket %q (%v), want %s", entry.AgentSocket, err, socket)
	}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(n.dataDir, "cache-agent"), nil)
	addAll := func(t *testing.T, ps []*cniPod) {
		t.Helper()
		errs := make([]error, len(ps))
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Go(func() {
				errs[i] = n.inNode(t, func() error {
					_, err := cfg.AddNetworkList(ctx, list, p.runtimeConf())
					return err
				})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("ADD %s: %v", ps[i].name, err)
			}
			if ourRules(save(t, ps[i].ns, false)) == "" {
				t.Errorf("no rules in %s", ps[i].name)
			}
		}
	}
	pluginGets := func(t *testing.T, prefix string) int { return pluginRequests(t, n.cluster, prefix) }
	agentGets := func(t *testing.T, name string) int {
		t.Helper()
		got := 0
		for _, e := range n.cluster.PodRequests(t) {
			if e.Verb == "get" && e.ObjectRef.Name == name && strings.HasPrefix(e.UserAgent, "shunt-install-cni") {
				got++
			}
		}
		return got
	}
	meshed := func(prefix string, count int) []*cniPod {
		ps := make([]*cniPod, count)
		for i := range ps {
			ps[i] = n.podSandbox(t, meshedPod("shop", fmt.Sprintf("%s-%03d", prefix, i), nil))
		}
		return ps
	}

	t.Run("no_api_request", func(t *testing.T) {
		addAll(t, meshed("watched", pods))
		if got := pluginGets(t, "watched"); got != 0 {
			t.Errorf("the plugin made %d API requests for %d ADDs with the agent up, want 0", got, pods)
		}
		waitFor(t, "the ADDs counted by source", func() bool {
			return strings.Contains(metrics(), fmt.Sprintf(`shunt_cni_pod_reads_total{source="agent"} %d`, pods))
		})
		// The shim handed every ADD to the agent: no standalone plugin ran.
		if m := metrics(); !strings.Contains(m, fmt.Sprintf(`shunt_cni_command_runs_total{command="ADD",runner="agent"} %d`, pods)) ||
			strings.Contains(m, `runner="standalone"`) {
			t.Errorf("ADDs by runner: %s; want all %d in the agent", grepLines(m, "shunt_cni_command_runs_total{"), pods)
		}
		rss := vmRSS(t, agent.cmd.Process.Pid)
		t.Logf("agent RSS with %d pods on the node: %.1f MiB", pods, float64(rss)/(1<<20))
		if rss > 50<<20 {
			t.Errorf("agent RSS %d bytes, above 50 MiB", rss)
		}
	})

	t.Run("pod_racing_the_watch", func(t *testing.T) {
		// Created and ADDed at once: the agent's watch may not have it yet.
		for i := range 5 {
			p := meshed(fmt.Sprintf("racing%d", i), 1)
			addAll(t, p)
			if got := agentGets(t, p[0].name); got > 1 {
				t.Errorf("%s: the agent read it %d times, want once at most", p[0].name, got)
			}
			if got := pluginGets(t, fmt.Sprintf("racing%d", i)); got != 0 {
				t.Errorf("%s: %d API requests by the plugin, want 0", p[0].name, got)
			}
		}
		// The watch wins the race above on this node; a sandbox whose uid the watch does not hold takes
		// the same path for certain: the agent reads the pod from the API server, once.
		p := meshed("newer", 1)
		p[0].uid = "uid-the-watch-does-not-hold"
		addAll(t, p)
		if got := agentGets(t, p[0].name); got != 1 {
			t.Errorf("%s: the agent read it %d times, want once", p[0].name, got)
		}
		if got := pluginGets(t, "newer"); got != 0 {
			t.Errorf("%s: %d API requests by the plugin, want 0", p[0].name, got)
		}
		answers := grepLines(metrics(), "shunt_cni_agent_pod_requests_total{")
		if !strings.Contains(answers, `{outcome="found",source="api"}`) {
			t.Errorf("agent answers %s, want one from the API server", answers)
		}
		t.Logf("agent answers: %s", answers)
	})

	t.Run("fallback_without_agent", func(t *testing.T) {
		agent.kill(t) // the socket stays behind: connection refused
		if _, err := os.Stat(socket); err != nil {
			t.Fatalf("the killed agent's socket: %v", err)
		}
		addAll(t, meshed("refused", 5))
		if got := pluginGets(t, "refused"); got != 5 {
			t.Errorf("agent killed: %d API requests by the plugin for 5 ADDs, want one GET each", got)
		}
		if err := os.Remove(socket); err != nil {
			t.Fatal(err)
		}
		addAll(t, meshed("nosocket", 5))
		if got := pluginGets(t, "nosocket"); got != 5 {
			t.Errorf("no agent socket: %d API requests by the plugin for 5 ADDs, want one GET each", got)
		}
	})
}

// vmRSS is the resident set size of process pid, from /proc/PID/status.
func vmRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// grepLines returns the lines of s that start with prefix, joined by "; ".
func grepLines(s, prefix string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.HasPrefix(line, prefix) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "; ")
}

// pluginRequests counts the plugin's own requests on the pods named prefix-* in c's audit log.
func pluginRequests(t testing.TB, c *kube.Cluster, prefix string) int {
	t.Helper()
	got := 0
	for _, e := range c.PodRequests(t) {
		if e.UserAgent == pluginUserAgent && strings.HasPrefix(e.ObjectRef.Name, prefix+"-") {
			got++
		}
	}
	return got
}
