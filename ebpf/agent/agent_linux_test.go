package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// metric returns the value of one sample of the agent's /metrics.
func metric(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	return ""
}

// TestRun: the agent loads the data path on a cgroup, is ready, exports the counters and the pods,
// drops a pod whose namespace is deleted while keeping the one that lives, and on stop with
// UnloadOnStop leaves no pin behind.
func TestRun(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t)
	pinDir := testutil.NewPinDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}) // closed when Run has returned runErr
	var runErr error
	go func() {
		defer close(done)
		runErr = Run(ctx, Config{Cgroup: cg.Path, PinDir: pinDir, HealthAddr: addr, GCInterval: 20 * time.Millisecond, UnloadOnStop: true})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = shuntebpf.Unload(pinDir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-done:
			t.Fatalf("agent stopped: %v", runErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	node, err := shuntebpf.Open(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	keep := testutil.NewNetNS(t)
	// The other namespace is deleted mid-test: made here rather than by NewNetNS.
	gone := fmt.Sprintf("shunt-agent-%d", time.Now().UnixNano())
	if out, err := exec.Command("ip", "netns", "add", gone).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", gone).Run() })
	cfg := redirect.DefaultConfig()
	for _, path := range []string{keep.Path(), "/run/netns/" + gone} {
		cookie, err := shuntebpf.NetNSCookie(path)
		if err != nil {
			t.Fatal(err)
		}
		pod, err := shuntebpf.PodFromConfig(cookie, &cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := node.AddPod(pod); err != nil {
			t.Fatal(err)
		}
	}
	keepCookie, _ := shuntebpf.NetNSCookie(keep.Path())
	if got := metric(t, addr, "shunt_ebpf_pods"); got != "2" {
		t.Fatalf("shunt_ebpf_pods = %q, want 2", got)
	}
	if got := metric(t, addr, "shunt_ebpf_connects_redirected_total"); got != "0" {
		t.Errorf("shunt_ebpf_connects_redirected_total = %q, want 0", got)
	}

	if out, err := exec.Command("ip", "netns", "del", gone).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	// The agent collects every 20ms: wait for the outcome, bounded.
	for deadline := time.Now().Add(10 * time.Second); metric(t, addr, "shunt_ebpf_pods_collected_total") != "1"; {
		if time.Now().After(deadline) {
			t.Fatalf("the pod of a deleted namespace was not dropped (collected %q)", metric(t, addr, "shunt_ebpf_pods_collected_total"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	pods, err := node.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pods) != fmt.Sprint([]uint64{keepCookie}) {
		t.Errorf("pods after collection = %v, want only the live one %d", pods, keepCookie)
	}

	node.Close()
	cancel()
	<-done
	if runErr != nil {
		t.Fatalf("Run: %v", runErr)
	}
	if _, err := shuntebpf.Open(pinDir); !errors.Is(err, shuntebpf.ErrNotLoaded) {
		t.Errorf("Open after a stop with UnloadOnStop = %v, want ErrNotLoaded", err)
	}
	if files, err := testutil.PinnedFiles(pinDir); err != nil || len(files) > 0 {
		t.Errorf("pins left: %v (%v)", files, err)
	}
}
