package install

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// errCrash stops a config change where a crash would.
var errCrash = errors.New("crash")

// crashed runs an installer's config change for cfg until the step named crashAt (none: to its end)
// and abandons it there, as when its process is killed: nothing is uninstalled.
func crashed(t *testing.T, cfg Config, crashAt string) *Installer {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var reached bool
	in.step = func(name string) error {
		if name == crashAt {
			reached = true
			return errCrash
		}
		return nil
	}
	_, err = in.ensureEntry()
	if crashAt == "" {
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	if !reached || !errors.Is(err, errCrash) {
		t.Fatalf("the change did not stop at %q: %v", crashAt, err)
	}
	return in
}

// leaveTemp leaves a temporary file of ours next to name, as a run killed while writing name does.
func leaveTemp(t *testing.T, n *testNode, name string) {
	t.Helper()
	writeFile(t, n.path(tempPrefix+name+"-4242"+tempSuffix), `{"cniVersion":"0.4.0","na`, 0o600)
}

// ourEntries counts the entries of ours in the conflist at path.
func ourEntries(t *testing.T, path string) int {
	t.Helper()
	data := []byte(readFile(t, path))
	l, err := findPlugins(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var count int
	for _, e := range l.elems {
		if pluginType(data[e.start:e.end]) == "shunt-cni" {
			count++
		}
	}
	return count
}

// loneConfs are primary configs of a single plugin, as agents write them. Each bytes must come back.
var loneConfs = []struct {
	file string
	data string
	mode fs.FileMode
}{
	{"10-bridge.conf", "{\n  \"cniVersion\": \"0.4.0\",\n  \"name\": \"mynet\",\n  \"type\": \"bridge\",\n  \"bridge\": \"cni0\",\n\n  \"ipam\": {\"type\": \"host-local\", \"subnet\": \"10.22.0.0/16\"}\n}\n\n", 0o600},
	// A .json sorts after its conflist; not valid UTF-8 in a string, which libcni takes as is.
	{"10-ptp.json", "  {\"name\":\"p\",\"type\":\"ptp\",\"mtu\":1500,\"x\":\"\xff\xfe\"}\r\n", 0o640},
}

// TestCrashRecovery kills a run at each point of turning a lone plugin config into a conflist, and
// of restoring it, then starts another run and stops it: the config directory must be as it was
// before the first run, byte for byte, mode for mode, with nothing of ours left.
func TestCrashRecovery(t *testing.T) {
	tests := []struct {
		name  string
		crash func(t *testing.T, n *testNode, cfg Config, file string)
	}{
		{"while_writing_conflist", func(t *testing.T, n *testNode, cfg Config, file string) {
			leaveTemp(t, n, strings.TrimSuffix(file, filepath.Ext(file))+".conflist")
		}},
		{"after_conflist_before_removing_original", func(t *testing.T, n *testNode, cfg Config, file string) {
			crashed(t, cfg, stepConflistWritten)
		}},
		{"after_removing_original", func(t *testing.T, n *testNode, cfg Config, file string) {
			crashed(t, cfg, stepOriginalRemoved)
		}},
		{"installed", func(t *testing.T, n *testNode, cfg Config, file string) {
			crashed(t, cfg, "")
		}},
		{"installed_killed_twice", func(t *testing.T, n *testNode, cfg Config, file string) {
			crashed(t, cfg, "")
			before := testutil.DirFiles(t, n.netDir)
			crashed(t, cfg, "")
			if diff := cmp.Diff(before, testutil.DirFiles(t, n.netDir)); diff != "" {
				t.Errorf("a second run changed what the first installed (-first +second):\n%s", diff)
			}
		}},
		{"restarted_with_another_entry", func(t *testing.T, n *testNode, cfg Config, file string) {
			cfg.Entry.LogLevel = "debug"
			crashed(t, cfg, "")
		}},
		{"while_restoring_original", func(t *testing.T, n *testNode, cfg Config, file string) {
			crashed(t, cfg, "")
			leaveTemp(t, n, file)
		}},
		{"after_restoring_original_before_removing_conflist", func(t *testing.T, n *testNode, cfg Config, file string) {
			in := crashed(t, cfg, "")
			in.step = func(name string) error {
				if name == stepOriginalWritten {
					return errCrash
				}
				return nil
			}
			if err := in.uninstall(); !errors.Is(err, errCrash) {
				t.Fatalf("uninstall did not stop when the original was restored: %v", err)
			}
		}},
	}
	for _, conf := range loneConfs {
		for _, tt := range tests {
			t.Run(strings.ReplaceAll(conf.file, ".", "_")+"/"+tt.name, func(t *testing.T) {
				n, cfg := newTestNode(t)
				writeFile(t, n.path(conf.file), conf.data, conf.mode)
				want := testutil.DirFiles(t, n.netDir)
				tt.crash(t, n, cfg, conf.file)

				in, stop := start(t, cfg)
				waitReady(t, in)
				list := n.path(strings.TrimSuffix(conf.file, filepath.Ext(conf.file)) + ".conflist")
				if exists(n.path(conf.file)) {
					t.Errorf("%s is back next to %s: the conversion was not completed", conf.file, list)
				}
				if got := ourEntries(t, list); got != 1 {
					t.Errorf("%d entries of ours, want 1", got)
				}
				if !hasOurEntry(t, in, list) {
					t.Error("the entry is not the one of this run")
				}
				if o, ok := readOriginal(list, []byte(readFile(t, list))); !ok || string(o.data) != conf.data || o.mode != conf.mode {
					t.Errorf("the conflist lost its record of the original: %+v", o)
				}
				if err := stop(); err != nil {
					t.Fatalf("Run: %v", err)
				}
				if diff := cmp.Diff(want, testutil.DirFiles(t, n.netDir)); diff != "" {
					t.Errorf("config directory after uninstall (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestCrashRecoveryUninstallOnly is TestCrashRecovery where the next run is stopped before it looks
// at the config: uninstalling alone must recognise what the killed run left.
func TestCrashRecoveryUninstallOnly(t *testing.T) {
	for _, conf := range loneConfs {
		for _, crashAt := range []string{stepConflistWritten, stepOriginalRemoved, ""} {
			t.Run(strings.ReplaceAll(conf.file, ".", "_")+"/"+strings.ReplaceAll(crashAt, " ", "_"), func(t *testing.T) {
				n, cfg := newTestNode(t)
				writeFile(t, n.path(conf.file), conf.data, conf.mode)
				want := testutil.DirFiles(t, n.netDir)
				crashed(t, cfg, crashAt)
				uninstallLeaves(t, cfg, n.netDir, want)
			})
		}
	}
}

// TestCrashRecoveryConflist kills a run that appended its entry to a conflist, in place.
func TestCrashRecoveryConflist(t *testing.T) {
	for _, name := range []string{"while_writing", "after_writing"} {
		t.Run(name, func(t *testing.T) {
			n, cfg := newTestNode(t)
			writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o640)
			want := testutil.DirFiles(t, n.netDir)
			if name == "while_writing" {
				leaveTemp(t, n, "10-calico.conflist")
			} else {
				crashed(t, cfg, stepConflistWritten)
			}
			in, stop := start(t, cfg)
			waitReady(t, in)
			if got := ourEntries(t, n.path("10-calico.conflist")); got != 1 {
				t.Errorf("%d entries of ours, want 1", got)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, testutil.DirFiles(t, n.netDir)); diff != "" {
				t.Errorf("config directory after uninstall (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLoneConfRewrittenWhileDown: the agent writes its .conf again while no installer runs, after a
// run was killed. The next run converts the agent's new config; uninstalling gives that one back.
func TestLoneConfRewrittenWhileDown(t *testing.T) {
	for _, crashAt := range []string{"", stepConflistWritten} {
		t.Run(strings.ReplaceAll(crashAt, " ", "_"), func(t *testing.T) {
			n, cfg := newTestNode(t)
			const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0"}`
			const conf2 = "{\"cniVersion\":\"0.4.0\",\"name\":\"mynet\",\"type\":\"bridge\",\"bridge\":\"cni1\"}\n"
			confPath, listPath := n.path("10-bridge.conf"), n.path("10-bridge.conflist")
			writeFile(t, confPath, conf, 0o644)
			crashed(t, cfg, crashAt)
			writeFile(t, confPath, conf2, 0o600)
			want := map[string]testutil.File{"10-bridge.conf": {Data: conf2, Mode: 0o600}}

			in, stop := start(t, cfg)
			waitReady(t, in)
			if exists(confPath) || !strings.Contains(readFile(t, listPath), "cni1") {
				t.Error("the agent's new .conf not converted")
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, testutil.DirFiles(t, n.netDir)); diff != "" {
				t.Errorf("config directory after uninstall (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUninstallKeepsNewerOriginal: a run was killed while restoring the .conf, and the agent wrote
// the .conf again before the next run: the agent's file stays.
func TestUninstallKeepsNewerOriginal(t *testing.T) {
	n, cfg := newTestNode(t)
	const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0"}`
	const conf2 = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni1"}`
	writeFile(t, n.path("10-bridge.conf"), conf, 0o644)
	crashed(t, cfg, stepConflistWritten) // both files there, as when killed while restoring
	writeFile(t, n.path("10-bridge.conf"), conf2, 0o644)
	want := map[string]testutil.File{"10-bridge.conf": {Data: conf2, Mode: 0o644}}
	uninstallLeaves(t, cfg, n.netDir, want)
}

// TestConvertedConflistChangedByOthers: another agent edits the conflist we made of a .conf (keeping
// our entry, and our record). Its change stays, as for any config changed since we wrote it: only our
// entry and our record go, before or after a restart.
func TestConvertedConflistChangedByOthers(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "running", true: "restarted"}[restart], func(t *testing.T) {
			n, cfg := newTestNode(t)
			const conf = `{"cniVersion":"0.4.0","name":"mynet","type":"bridge"}`
			listPath := n.path("10-bridge.conflist")
			writeFile(t, n.path("10-bridge.conf"), conf, 0o644)
			if restart {
				crashed(t, cfg, "")
			}
			in, stop := start(t, cfg)
			waitReady(t, in)
			changed := strings.Replace(readFile(t, listPath), `"name": "mynet"`, `"name": "mynet", "x-agent": 1`, 1)
			rewrite(t, listPath, changed)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			got := readFile(t, listPath)
			if exists(n.path("10-bridge.conf")) {
				t.Error("the .conf came back over another agent's change")
			}
			if !strings.Contains(got, `"x-agent": 1`) || strings.Contains(got, "shunt") {
				t.Errorf("want the changed conflist without our entry and record:\n%s", got)
			}
			if _, err := libcni.ConfListFromBytes([]byte(got)); err != nil {
				t.Errorf("what is left does not load: %v", err)
			}
		})
	}
}

func TestStaleTempsRemoved(t *testing.T) {
	n, cfg := newTestNode(t)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	leaveTemp(t, n, "shunt-kubeconfig")
	bin := filepath.Join(n.binDir, tempPrefix+"shunt-cni-77"+tempSuffix)
	writeFile(t, bin, "#!/bin/sh\n", 0o755)
	foreign := n.path(".other-agent.tmp")
	writeFile(t, foreign, "x", 0o644)
	in, stop := start(t, cfg)
	waitReady(t, in)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]testutil.File{
		"10-calico.conflist": {Data: calicoConflist, Mode: 0o644},
		".other-agent.tmp":   {Data: "x", Mode: 0o644},
	}, testutil.DirFiles(t, n.netDir)); diff != "" {
		t.Errorf("net.d (-want +got):\n%s", diff)
	}
	if exists(bin) {
		t.Error("stale temporary binary left")
	}
}

// uninstallLeaves uninstalls with a fresh installer for cfg, as a restarted one does, and compares
// the config directory with want.
func uninstallLeaves(t *testing.T, cfg Config, dir string, want map[string]testutil.File) {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.uninstall(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, testutil.DirFiles(t, dir)); diff != "" {
		t.Errorf("config directory after uninstall (-want +got):\n%s", diff)
	}
}
