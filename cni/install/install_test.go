package install

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// fakePluginScript answers VERSION as a CNI plugin does.
const fakePluginScript = `#!/bin/sh
[ "$CNI_COMMAND" = VERSION ] || exit 1
cat >/dev/null
echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}'
`

// testNode is an installer's world: the host's directories, the service account, the socket.
type testNode struct {
	binDir, netDir, saDir, socket string
	log                           *testutil.LockedBuffer
}

func (n *testNode) path(name string) string { return filepath.Join(n.netDir, name) }

// newTestNode makes a node's directories and a fake plugin binary to install.
func newTestNode(t *testing.T) (*testNode, Config) {
	t.Helper()
	root := t.TempDir()
	n := &testNode{
		binDir: filepath.Join(root, "bin"),
		netDir: filepath.Join(root, "net.d"),
		saDir:  filepath.Join(root, "sa"),
		// Socket paths are short (108 bytes); the temporary directory may not be.
		socket: filepath.Join(mustShortDir(t), "cni.sock"),
		log:    &testutil.LockedBuffer{},
	}
	for _, d := range []string{n.binDir, n.netDir, n.saDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(root, "shunt")
	writeFile(t, src, fakePluginScript, 0o755)
	writeFile(t, filepath.Join(n.saDir, "token"), "token-1\n", 0o600)
	writeFile(t, filepath.Join(n.saDir, "ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 0o644)
	e := testEntry
	e.ReportSocket = n.socket
	cfg := Config{
		Binary:       src,
		BinDir:       n.binDir,
		NetDir:       n.netDir,
		TokenFile:    filepath.Join(n.saDir, "token"),
		CAFile:       filepath.Join(n.saDir, "ca.crt"),
		APIServer:    "https://10.96.0.1:443",
		Entry:        e,
		ReportSocket: n.socket,
		Debounce:     10 * time.Millisecond,
		Retry:        50 * time.Millisecond,
		// No backoff unless a test asks for one.
		FightThreshold:  100,
		FightBackoff:    time.Hour,
		FightBackoffMax: time.Hour,
		Logger:          slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("installer log:\n%s", n.log)
		}
	})
	return n, cfg
}

func mustShortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "shunt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func writeFile(t *testing.T, path, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// rewrite replaces path as an agent does, by rename.
func rewrite(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "agent.tmp")
	writeFile(t, tmp, data, 0o644)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// waitFor polls cond until it holds, failing t after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// start runs an installer for cfg; stop ends it and returns Run's error.
func start(t *testing.T, cfg Config) (in *Installer, stop func() error) {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = errors.New("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return in, stop
}

func waitReady(t *testing.T, in *Installer) {
	t.Helper()
	waitFor(t, "the installer is ready", func() bool { ok, _ := in.readiness(); return ok })
}

func hasOurEntry(t *testing.T, in *Installer, path string) bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	_, same, err := FindEntry(data, in.entry)
	return err == nil && same
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape returns the samples of /metrics, keyed by series as exposed (name{labels}).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, body := get(t, url+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

const calicoConflist = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "datastore_type": "kubernetes",
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"}
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
`

func TestInstallUninstall(t *testing.T) {
	n, cfg := newTestNode(t)
	primary, other := n.path("10-calico.conflist"), n.path("99-loopback.conflist")
	writeFile(t, primary, calicoConflist, 0o640)
	const otherConf = `{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`
	writeFile(t, other, otherConf, 0o644)

	in, stop := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	if code, _ := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	waitReady(t, in)

	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %s, want 200", code, body)
	}
	data := []byte(readFile(t, primary))
	want := append(pluginsOf(t, []byte(calicoConflist)), string(in.entry))
	if diff := cmp.Diff(want, pluginsOf(t, data)); diff != "" {
		t.Errorf("plugins (-want +got):\n%s", diff)
	}
	if got := fileMode(t, primary); got != 0o640 {
		t.Errorf("conflist mode %v, want 0640", got)
	}
	if got := readFile(t, other); got != otherConf {
		t.Errorf("a file not first changed:\n%s", got)
	}
	bin := filepath.Join(n.binDir, "shunt-cni")
	if got := readFile(t, bin); got != fakePluginScript {
		t.Errorf("installed binary differs from its source")
	}
	if got := fileMode(t, bin); got != 0o755 {
		t.Errorf("binary mode %v, want 0755", got)
	}
	kc := n.path(DefaultKubeconfigName)
	if got := fileMode(t, kc); got != 0o600 {
		t.Errorf("kubeconfig mode %v, want 0600", got)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != cfg.APIServer || rc.BearerToken != "token-1" || !strings.Contains(string(rc.CAData), "MIIB") {
		t.Errorf("kubeconfig: host %q token %q CA %q", rc.Host, rc.BearerToken, rc.CAData)
	}
	if fi, err := os.Lstat(n.socket); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("report socket: %v", err)
	}
	for _, msg := range []string{"appended our entry to the primary CNI config", "shunt-cni installed and ready"} {
		if !strings.Contains(n.log.String(), msg) {
			t.Errorf("log lacks %q", msg)
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := readFile(t, primary); got != calicoConflist {
		t.Errorf("uninstall did not restore the conflist byte for byte:\n%s", got)
	}
	if got := fileMode(t, primary); got != 0o640 {
		t.Errorf("restored conflist mode %v, want 0640", got)
	}
	for _, f := range []string{bin, kc, n.socket} {
		if exists(f) {
			t.Errorf("%s left behind", f)
		}
	}
	entries, _ := os.ReadDir(n.netDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"10-calico.conflist", "99-loopback.conflist"}, names); diff != "" {
		t.Errorf("net.d after uninstall (-want +got):\n%s", diff)
	}
}

func TestInstallLoneConf(t *testing.T) {
	n, cfg := newTestNode(t)
	const conf = "{\n  \"cniVersion\": \"0.4.0\",\n  \"name\": \"mynet\",\n  \"type\": \"bridge\",\n  \"bridge\": \"cni0\",\n  \"ipam\": {\"type\": \"host-local\", \"subnet\": \"10.22.0.0/16\"}\n}\n"
	confPath, listPath := n.path("10-bridge.conf"), n.path("10-bridge.conflist")
	writeFile(t, confPath, conf, 0o600)
	in, stop := start(t, cfg)
	waitReady(t, in)
	if exists(confPath) {
		t.Error("the .conf is still there: runtimes would read it before the .conflist")
	}
	data := []byte(readFile(t, listPath))
	var c bytes.Buffer
	if err := json.Compact(&c, []byte(conf)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{c.String(), string(in.entry)}, pluginsOf(t, data)); diff != "" {
		t.Errorf("plugins (-want +got):\n%s", diff)
	}
	if got := fileMode(t, listPath); got != 0o600 {
		t.Errorf("conflist mode %v, want the .conf's 0600", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, confPath); got != conf {
		t.Errorf(".conf not restored byte for byte:\n%s", got)
	}
	if got := fileMode(t, confPath); got != 0o600 {
		t.Errorf(".conf mode %v, want 0600", got)
	}
	if exists(listPath) {
		t.Error("the .conflist made from the .conf is left behind")
	}
}

func TestUninstallAfterAnotherChange(t *testing.T) {
	n, cfg := newTestNode(t)
	primary := n.path("10-calico.conflist")
	writeFile(t, primary, calicoConflist, 0o644)
	in, stop := start(t, cfg)
	waitReady(t, in)
	// Another agent edits the file and keeps our entry.
	changed := strings.Replace(readFile(t, primary), `"cniVersion": "0.3.1"`, `"cniVersion": "0.4.0"`, 1)
	rewrite(t, primary, changed)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(calicoConflist, `"cniVersion": "0.3.1"`, `"cniVersion": "0.4.0"`, 1)
	if diff := cmp.Diff(want, readFile(t, primary)); diff != "" {
		t.Errorf("uninstall must remove just our entry (-want +got):\n%s", diff)
	}
}

func TestEntryRestartAdopted(t *testing.T) {
	n, cfg := newTestNode(t)
	primary := n.path("10-calico.conflist")
	withEntry, err := InsertEntry([]byte(calicoConflist), mustEntry(t, cfg.Entry))
	if err != nil {
		t.Fatal(err)
	}
	// An earlier run was killed and left its entry.
	writeFile(t, primary, string(withEntry), 0o644)
	in, stop := start(t, cfg)
	waitReady(t, in)
	if got := readFile(t, primary); got != string(withEntry) {
		t.Errorf("entry in place, file rewritten anyway:\n%s", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, primary); got != calicoConflist {
		t.Errorf("uninstall after restart did not restore the original:\n%s", got)
	}
}

func TestWaitsForPrimaryAndFollowsIt(t *testing.T) {
	n, cfg := newTestNode(t)
	in, stop := start(t, cfg)
	waitFor(t, "the installer waits for a config", func() bool {
		return strings.Contains(n.log.String(), "waiting for the primary network's CNI config")
	})
	if ok, _ := in.readiness(); ok {
		t.Fatal("ready without a CNI config")
	}
	// A file that is not a config and a half-written one are not used.
	writeFile(t, n.path("README"), "not a config", 0o644)
	second := n.path("20-flannel.conflist")
	rewrite(t, second, `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}`)
	waitFor(t, "the entry is in 20-flannel.conflist", func() bool { return hasOurEntry(t, in, second) })
	waitReady(t, in)

	// A config that sorts first appears: the entry moves, the old file is restored.
	first := n.path("05-cilium.conflist")
	rewrite(t, first, calicoConflist)
	waitFor(t, "the entry moved to 05-cilium.conflist", func() bool { return hasOurEntry(t, in, first) })
	waitFor(t, "20-flannel.conflist restored", func() bool {
		return readFile(t, second) == `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}`
	})
	waitReady(t, in)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, first); got != calicoConflist {
		t.Errorf("not restored:\n%s", got)
	}
}

func TestEntryPutBack(t *testing.T) {
	n, cfg := newTestNode(t)
	cfg.FightThreshold = 100
	primary := n.path("10-calico.conflist")
	writeFile(t, primary, calicoConflist, 0o644)
	in, stop := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	waitReady(t, in)

	// The primary CNI's installer rewrites its config, without our entry.
	rewrite(t, primary, calicoConflist)
	waitFor(t, "the entry is back", func() bool { return hasOurEntry(t, in, primary) })
	// And removes it, then writes it again.
	if err := os.Remove(primary); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the loss is seen", func() bool {
		return scrape(t, srv.URL)["shunt_cni_conflist_rewrites_total"] == 2
	})
	rewrite(t, primary, calicoConflist)
	waitFor(t, "the entry is back", func() bool { return hasOurEntry(t, in, primary) })
	waitReady(t, in)
	if got := scrape(t, srv.URL)["shunt_cni_conflist_rewrites_total"]; got != 2 {
		t.Errorf("shunt_cni_conflist_rewrites_total = %v, want 2", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, primary); got != calicoConflist {
		t.Errorf("not restored:\n%s", got)
	}
}

func TestReadyzAfterEntryLost(t *testing.T) {
	n, cfg := newTestNode(t)
	// Back off at the first loss, for long: the entry stays lost.
	cfg.FightThreshold, cfg.FightBackoff, cfg.FightBackoffMax = 1, time.Hour, time.Hour
	primary := n.path("10-calico.conflist")
	writeFile(t, primary, calicoConflist, 0o644)
	in, _ := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	waitReady(t, in)
	rewrite(t, primary, calicoConflist)
	waitFor(t, "the loss is counted", func() bool {
		return scrape(t, srv.URL)["shunt_cni_conflist_rewrites_total"] == 1
	})
	code, body := get(t, srv.URL+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "missing from "+primary) {
		t.Errorf("/readyz = %d %q; want 503 naming the file", code, body)
	}
	if got := scrape(t, srv.URL)["shunt_cni_ready"]; got != 0 {
		t.Errorf("shunt_cni_ready = %v, want 0", got)
	}
}

func TestFightBacksOff(t *testing.T) {
	n, cfg := newTestNode(t)
	const base, max = 100 * time.Millisecond, 200 * time.Millisecond
	cfg.FightThreshold, cfg.FightWindow, cfg.FightBackoff, cfg.FightBackoffMax = 3, time.Minute, base, max
	primary := n.path("10-calico.conflist")
	writeFile(t, primary, calicoConflist, 0o644)
	in, _ := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	waitReady(t, in)

	// minBack is the least time the entry may take to come back after each fight.
	minBack := []time.Duration{0, 0, base, 2 * base, max, max}
	for i, least := range minBack {
		rewrite(t, primary, calicoConflist)
		t0 := time.Now()
		waitFor(t, "the entry is back", func() bool { return hasOurEntry(t, in, primary) })
		if took := time.Since(t0); took < least {
			t.Errorf("fight %d: entry back after %v, want a backoff of at least %v", i+1, took, least)
		}
	}
	if got := scrape(t, srv.URL)["shunt_cni_conflist_rewrites_total"]; got != float64(len(minBack)) {
		t.Errorf("shunt_cni_conflist_rewrites_total = %v, want %d", got, len(minBack))
	}
	log := n.log.String()
	var warns int
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "another agent keeps rewriting the CNI config") &&
			strings.Contains(line, "file="+primary) {
			warns++
		}
	}
	if warns != len(minBack)-2 {
		t.Errorf("%d warnings naming the file, want %d:\n%s", warns, len(minBack)-2, log)
	}
}

func TestBinaryAndKubeconfigKeptInPlace(t *testing.T) {
	n, cfg := newTestNode(t)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	in, _ := start(t, cfg)
	waitReady(t, in)
	bin := filepath.Join(n.binDir, "shunt-cni")

	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the binary is back", func() bool { b, _ := os.ReadFile(bin); return string(b) == fakePluginScript })
	rewrite(t, bin, "#!/bin/sh\necho not ours\n")
	waitFor(t, "the binary is ours again", func() bool { b, _ := os.ReadFile(bin); return string(b) == fakePluginScript })
	waitReady(t, in)

	// The kubelet rotates the token: it swaps a symlinked directory, as here.
	rewrite(t, cfg.TokenFile, "token-2\n")
	kc := n.path(DefaultKubeconfigName)
	waitFor(t, "the kubeconfig has the new token", func() bool {
		rc, err := clientcmd.BuildConfigFromFlags("", kc)
		return err == nil && rc.BearerToken == "token-2"
	})
	if err := os.Remove(kc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the kubeconfig is back", func() bool { return exists(kc) })
	waitReady(t, in)
}

func TestNotReadyWhenPluginDoesNotRun(t *testing.T) {
	n, cfg := newTestNode(t)
	writeFile(t, cfg.Binary, "#!/bin/sh\necho 'not a plugin'\n", 0o755)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	in, _ := start(t, cfg)
	waitFor(t, "the verification fails", func() bool {
		return strings.Contains(n.log.String(), "not a CNI version result")
	})
	if ok, why := in.readiness(); ok || !strings.Contains(why, "not installed and verified") {
		t.Errorf("readiness = %v, %q", ok, why)
	}
	// An entry without a working plugin would fail every pod on the node.
	if got := readFile(t, n.path("10-calico.conflist")); got != calicoConflist {
		t.Errorf("entry added for a plugin that does not run:\n%s", got)
	}
}

func TestReportsToMetrics(t *testing.T) {
	n, cfg := newTestNode(t)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	in, _ := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	waitReady(t, in)

	reports := []cni.Report{
		{Command: "ADD", Namespace: "a", Name: "p1", Outcome: cni.OutcomeProgrammed, APISeconds: 0.004, ProgramSeconds: 0.002, TotalSeconds: 0.007},
		{Command: "ADD", Namespace: "a", Name: "p2", Outcome: cni.OutcomeProgrammed, APISeconds: 0.02, ProgramSeconds: 0.3, TotalSeconds: 0.33},
		{Command: "ADD", Namespace: "kube-system", Name: "p3", Outcome: cni.OutcomeSkipped, TotalSeconds: 0.0005},
		{Command: "ADD", Namespace: "a", Name: "p4", Outcome: cni.OutcomeFailed, Reason: "api timeout", APISeconds: 20, TotalSeconds: 20},
		{Command: "CHECK", Namespace: "a", Name: "p1", Outcome: cni.OutcomeChecked, TotalSeconds: 0.001},
		{Command: "CHECK", Namespace: "a", Name: "p2", Outcome: cni.OutcomeCheckFailed, Reason: "rules differ", TotalSeconds: 0.001},
		{Command: "DEL", Namespace: "a", Name: "p1", Outcome: cni.OutcomeRemoved, TotalSeconds: 0.001},
	}
	for _, r := range reports {
		if err := cni.SendReport(n.socket, r); err != nil {
			t.Fatal(err)
		}
	}
	var m map[string]float64
	waitFor(t, "every report is counted", func() bool {
		m = scrape(t, srv.URL)
		var sum float64
		for k, v := range m {
			if strings.HasPrefix(k, "shunt_cni_reports_total{") {
				sum += v
			}
		}
		return sum == float64(len(reports))
	})
	want := map[string]float64{
		"shunt_cni_pods_programmed_total":                                  2,
		"shunt_cni_pods_skipped_total":                                     1,
		"shunt_cni_add_failures_total":                                     1,
		"shunt_cni_check_failures_total":                                   1,
		`shunt_cni_reports_total{command="ADD",outcome="programmed"}`:      2,
		`shunt_cni_reports_total{command="CHECK",outcome="check_failed"}`:  1,
		`shunt_cni_reports_total{command="DEL",outcome="removed"}`:         1,
		`shunt_cni_add_duration_seconds_count{phase="total"}`:              4,
		`shunt_cni_add_duration_seconds_count{phase="api"}`:                3,
		`shunt_cni_add_duration_seconds_count{phase="program"}`:            2,
		`shunt_cni_add_duration_seconds_bucket{phase="total",le="0.01"}`:   2,
		`shunt_cni_add_duration_seconds_bucket{phase="program",le="0.25"}`: 1,
		`shunt_cni_add_duration_seconds_bucket{phase="api",le="+Inf"}`:     3,
		"shunt_cni_conflist_rewrites_total":                                0,
		"shunt_cni_ready":                                                  1,
	}
	got := make(map[string]float64)
	for k := range want {
		got[k] = m[k]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	// The node's backend decision, one series.
	var info []string
	for k, v := range m {
		if strings.HasPrefix(k, "shunt_cni_backend_info{") && v == 1 {
			info = append(info, k)
		}
	}
	if len(info) != 1 || !strings.Contains(info[0], `backend="iptables-`) || !strings.Contains(info[0], `reason="`) {
		t.Errorf("shunt_cni_backend_info: %q, want one series naming the backend and the reason", info)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	n, cfg := newTestNode(t)
	// A socket file left by a killed run.
	c, err := listenReports(n.socket)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if !exists(n.socket) {
		t.Fatal("no stale socket to test with")
	}
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	in, stop := start(t, cfg)
	waitReady(t, in)
	if err := cni.SendReport(n.socket, cni.Report{Command: "ADD", Outcome: cni.OutcomeSkipped}); err != nil {
		t.Errorf("send to the new socket: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if exists(n.socket) {
		t.Error("socket left behind")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, cfg := newTestNode(t)
	cfg.APIServer = ""
	cfg.Repair.Mode = "fix"
	cfg.Entry.LogLevel = "loud"
	_, err := New(cfg)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"APIServer", "Repair.Mode", "log_level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestLoneConfRewrittenByItsAgent(t *testing.T) {
	n, cfg := newTestNode(t)
	const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0"}`
	const conf2 = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni1"}`
	confPath, listPath := n.path("10-bridge.conf"), n.path("10-bridge.conflist")
	writeFile(t, confPath, conf, 0o644)
	in, stop := start(t, cfg)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	waitReady(t, in)
	// The agent writes its .conf again; it sorts before our .conflist, so runtimes would use it.
	rewrite(t, confPath, conf2)
	waitFor(t, "the .conf is converted again", func() bool {
		return !exists(confPath) && strings.Contains(readFile(t, listPath), "cni1") && hasOurEntry(t, in, listPath)
	})
	if got := scrape(t, srv.URL)["shunt_cni_conflist_rewrites_total"]; got != 1 {
		t.Errorf("shunt_cni_conflist_rewrites_total = %v, want 1", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, confPath); got != conf2 {
		t.Errorf("the agent's latest .conf not restored:\n%s", got)
	}
	if exists(listPath) {
		t.Error(".conflist left behind")
	}
}

func TestInvalidFirstConfigWaits(t *testing.T) {
	n, cfg := newTestNode(t)
	first, second := n.path("05-half.conflist"), n.path("10-calico.conflist")
	writeFile(t, first, `{"name":"half","plugins":[`, 0o644) // being written, not atomically
	writeFile(t, second, calicoConflist, 0o644)
	in, stop := start(t, cfg)
	waitFor(t, "the invalid file is reported", func() bool {
		return strings.Contains(n.log.String(), "05-half.conflist")
	})
	if ok, why := in.readiness(); ok || !strings.Contains(why, "05-half.conflist") {
		t.Errorf("readiness = %v, %q; want not ready, naming the invalid file", ok, why)
	}
	if got := readFile(t, second); got != calicoConflist {
		t.Error("the second file got our entry: runtimes use the first")
	}
	rewrite(t, first, `{"name":"half","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]}`)
	waitReady(t, in)
	if !hasOurEntry(t, in, first) {
		t.Error("entry not in the first file")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, first); got != `{"name":"half","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]}` {
		t.Errorf("not restored:\n%s", got)
	}
}

// TestNoTypedKubernetesClient keeps k8s.io/api and the typed clientset out of the shunt binary: their
// package initialisation would slow every start of the init container.
func TestNoTypedKubernetesClient(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/shuntmesh/shunt/cmd/shunt", "github.com/shuntmesh/shunt/cni/install").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/api/") || strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes") {
			t.Errorf("the shunt binary imports %s", pkg)
		}
	}
}

func TestLoneConfNextToOthersConflist(t *testing.T) {
	n, cfg := newTestNode(t)
	const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge"}`
	const list = `{"cniVersion":"0.4.0","name":"other","plugins":[{"type":"ptp"}]}`
	writeFile(t, n.path("10-bridge.conf"), conf, 0o644)
	writeFile(t, n.path("10-bridge.conflist"), list, 0o644)
	in, _ := start(t, cfg)
	waitFor(t, "the clash is reported", func() bool {
		return strings.Contains(n.log.String(), "which is not ours")
	})
	if ok, _ := in.readiness(); ok {
		t.Error("ready without an entry")
	}
	if readFile(t, n.path("10-bridge.conf")) != conf || readFile(t, n.path("10-bridge.conflist")) != list {
		t.Error("files changed")
	}
}

func TestLoneConfAfterRestart(t *testing.T) {
	n, cfg := newTestNode(t)
	const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge"}`
	// An earlier run, killed, left the conflist it made; the agent has since written its .conf again.
	made, err := ConfToConflist([]byte(conf), mustEntry(t, cfg.Entry))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, n.path("10-bridge.conflist"), string(made), 0o644)
	writeFile(t, n.path("10-bridge.conf"), conf, 0o644)
	in, stop := start(t, cfg)
	waitReady(t, in)
	if exists(n.path("10-bridge.conf")) {
		t.Error(".conf not converted")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, n.path("10-bridge.conf")); got != conf {
		t.Errorf(".conf not restored: %s", got)
	}
}
