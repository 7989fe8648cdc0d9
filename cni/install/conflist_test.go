package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/cni"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// testEntry is the entry the tests install.
var testEntry = Entry{
	Kubeconfig:        cni.DefaultKubeconfig,
	LogLevel:          "info",
	LogFile:           cni.DefaultLogFile,
	ExcludeNamespaces: []string{"kube-system"},
	APITimeout:        20 * time.Second,
	ReportSocket:      cni.DefaultReportSocket,
}

func mustEntry(t testing.TB, e Entry) []byte {
	t.Helper()
	b, err := e.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// golden compares got with testdata/<name>.golden, rewriting it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

// pluginsOf decodes the plugins of a conflist, each compacted.
func pluginsOf(t *testing.T, data []byte) []string {
	t.Helper()
	var c struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("%v:\n%s", err, data)
	}
	var out []string
	for _, p := range c.Plugins {
		var b bytes.Buffer
		if err := json.Compact(&b, p); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.String())
	}
	return out
}

func TestEntryParsesAsNetConf(t *testing.T) {
	e := testEntry
	e.IptablesVariant = "nft"
	e.ExcludeNamespaces = nil
	conf, err := cni.ParseNetConf(mustEntry(t, e))
	if err != nil {
		t.Fatal(err)
	}
	got := []any{conf.Type, conf.Kubeconfig, conf.LogLevel, conf.LogFile, conf.ExcludeNamespaces, conf.Timeout(),
		conf.IptablesVariant, conf.ReportSocket, conf.Capabilities}
	want := []any{cni.PluginType, e.Kubeconfig, "info", e.LogFile, []string{}, 20 * time.Second, "nft", e.ReportSocket,
		map[string]bool{cni.CapabilityAnnotations: true}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

const ourOld = `{"type": "shunt-cni", "log_level": "debug"}`

func TestInsertRemoveEntry(t *testing.T) {
	entry := mustEntry(t, testEntry)
	tests := []struct {
		name string
		in   string
		// restored is what RemoveEntry gives back from the result; default in.
		restored string
		// unchanged: the entry is there already.
		unchanged bool
	}{
		{name: "pretty", in: `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "ipam": {
        "type": "calico-ipam"
      }
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    }
  ]
}
`},
		{name: "tabs", in: "{\n\t\"cniVersion\": \"0.3.1\",\n\t\"name\": \"cbr0\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"flannel\",\n\t\t\t\"delegate\": {\"hairpinMode\": true, \"isDefaultGateway\": true}\n\t\t}\n\t]\n}\n"},
		{name: "compact", in: `{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"firewall"}]}`},
		{name: "one-line-entries", in: "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"net\",\n  \"plugins\": [\n    {\"type\": \"ptp\"},\n    {\"type\": \"bandwidth\"}\n  ]\n}"},
		{name: "unknown-fields", in: `{
    "cniVersion": "1.1.0",
    "cniVersions": ["1.0.0", "1.1.0"],
    "name": "caf\u00e9",
    "x-vendor": {"weights": [1.50, 2e3, -0], "note": "a \"quoted\" ]} value"},
    "disableCheck": "true",
    "plugins": [
        {
            "type": "cilium-cni",
            "mtu": 1.5e3,
            "enable-debug": false,
            "zz": null
        }
    ],
    "trailer": [[], {}]
}`},
		{name: "crlf-odd-spacing", in: "{ \"name\" : \"w\" ,\r\n \"cniVersion\" : \"0.4.0\" ,\r\n \"plugins\" : [ { \"type\" : \"win-bridge\" } ,\r\n   { \"type\" : \"tuning\" , \"sysctl\" : { } }\r\n ] }\r\n"},
		{name: "duplicate-plugins-key", in: `{"name":"d","cniVersion":"1.0.0","plugins":[{"type":"ignored"}],"plugins":[{"type":"used"}]}`},
		{name: "empty-plugins", in: `{"name":"e","cniVersion":"1.0.0","plugins":[ ]}`},
		{name: "present", unchanged: true, in: `{"name":"p","cniVersion":"1.0.0","plugins":[{"type":"bridge"},` + string(entry) + `]}`},
		{name: "present-reformatted", unchanged: true, in: `{"name":"p","cniVersion":"1.0.0","plugins":[{"type":"bridge"},
  {
    "capabilities": {"io.kubernetes.cri.pod-annotations": true},
    "type": "shunt-cni", "kubeconfig": "/etc/cni/net.d/shunt-kubeconfig", "log_level": "info",
    "log_file": "/var/run/shunt/cni.log", "exclude_namespaces": ["kube-system"], "api_timeout": "20s",
    "iptables_variant": "", "report_socket": "/var/run/shunt/cni.sock"
  }]}`},
		{name: "present-with-plugins-after", unchanged: true, in: "{\n  \"name\": \"a\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\"},\n    " + string(entry) + ",\n    {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}},\n    {\"type\": \"bandwidth\"}\n  ]\n}\n"},
		{name: "stale", in: "{\n  \"name\": \"s\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\"},\n    " + ourOld + "\n  ]\n}\n",
			restored: "{\n  \"name\": \"s\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\"}\n  ]\n}\n"},
		{name: "stale-first", in: `{"name":"s","cniVersion":"1.0.0","plugins":[` + ourOld + `, {"type":"bridge"}, {"type":"portmap"}]}`,
			restored: `{"name":"s","cniVersion":"1.0.0","plugins":[{"type":"bridge"}, {"type":"portmap"}]}`},
		{name: "stale-twice", in: `{"name":"s","cniVersion":"1.0.0","plugins":[{"type":"bridge"}, ` + ourOld + `, {"type":"portmap"}, ` + ourOld + `]}`,
			restored: `{"name":"s","cniVersion":"1.0.0","plugins":[{"type":"bridge"}, {"type":"portmap"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.in)
			out, err := InsertEntry(in, entry)
			if err != nil {
				t.Fatal(err)
			}
			if tt.unchanged {
				if !bytes.Equal(out, in) {
					t.Errorf("entry present, file changed:\n%s", out)
				}
				return
			}
			golden(t, "insert-"+tt.name, out)
			if !json.Valid(out) {
				t.Fatalf("result is not JSON:\n%s", out)
			}
			// Every plugin kept, ours last.
			wantPlugins := pluginsOf(t, []byte(tt.in))
			if tt.restored != "" {
				wantPlugins = pluginsOf(t, []byte(tt.restored))
			}
			wantPlugins = append(wantPlugins, string(entry))
			if diff := cmp.Diff(wantPlugins, pluginsOf(t, out)); diff != "" {
				t.Errorf("plugins (-want +got):\n%s", diff)
			}
			if found, same, err := FindEntry(out, entry); err != nil || !found || !same {
				t.Errorf("FindEntry = %v, %v, %v; want true, true, nil", found, same, err)
			}
			again, err := InsertEntry(out, entry)
			if err != nil || !bytes.Equal(again, out) {
				t.Errorf("second insert changed the file (err %v):\n%s", err, again)
			}
			back, err := RemoveEntry(out)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.in
			if tt.restored != "" {
				want = tt.restored
			}
			if diff := cmp.Diff(want, string(back)); diff != "" {
				t.Errorf("RemoveEntry(InsertEntry(in)) (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRemoveEntryKeepsOthers(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"absent", `{"name":"n","plugins":[{"type":"bridge"}]}`, `{"name":"n","plugins":[{"type":"bridge"}]}`},
		{"only", `{"name":"n","plugins":[ {"type":"shunt-cni"} ]}`, `{"name":"n","plugins":[  ]}`},
		{"middle", "{\"plugins\": [\n  {\"type\": \"a\"},\n  {\"type\": \"shunt-cni\"},\n  {\"type\": \"b\"}\n]}",
			"{\"plugins\": [\n  {\"type\": \"a\"},\n  {\"type\": \"b\"}\n]}"},
		{"first", "{\"plugins\": [\n  {\"type\": \"shunt-cni\"},\n  {\"type\": \"b\"}\n]}", "{\"plugins\": [\n  {\"type\": \"b\"}\n]}"},
		{"type-escaped", `{"plugins":[{"type":"a"},{"type":"shunt\u002dcni"}]}`, `{"plugins":[{"type":"a"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RemoveEntry([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestInsertEntryErrors(t *testing.T) {
	entry := mustEntry(t, testEntry)
	tests := []struct {
		name, in string
		want     error
	}{
		{"not-json", `{"plugins": [}`, ErrInvalidJSON},
		{"empty", ``, ErrInvalidJSON},
		{"array", `[{"type":"bridge"}]`, ErrNotObject},
		{"no-plugins", `{"name":"n","cniVersion":"1.1.0"}`, ErrNoPlugins},
		{"plugins-not-array", `{"name":"n","plugins":{"type":"bridge"}}`, ErrNoPlugins},
		{"last-plugins-not-array", `{"name":"n","plugins":[{"type":"bridge"}],"plugins":null}`, ErrNoPlugins},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := InsertEntry([]byte(tt.in), entry)
			if !errors.Is(err, tt.want) {
				t.Errorf("InsertEntry error = %v, want %v", err, tt.want)
			}
			_, err = RemoveEntry([]byte(tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("RemoveEntry error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestConfToConflist(t *testing.T) {
	entry := mustEntry(t, testEntry)
	tests := []struct{ name, conf string }{
		{"bridge", `{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "isGateway": true,
  "ipam": {
    "type": "host-local",
    "ranges": [[{"subnet": "10.22.0.0/16"}]]
  }
}
`},
		{"compact-no-version", `{"name":"n","type":"ptp","mtu":1500}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := ConfToConflist([]byte(tt.conf), entry)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "conf-"+tt.name, out)
			list, err := libcni.NetworkConfFromBytes(out)
			if err != nil {
				t.Fatalf("libcni rejects the conflist: %v\n%s", err, out)
			}
			conf, err := libcni.NetworkPluginConfFromBytes([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			// The runtime saw the .conf as libcni's ConfListFromConf makes it; so it sees this.
			if list.Name != conf.Network.Name || list.CNIVersion != conf.Network.CNIVersion {
				t.Errorf("conflist name, version = %q, %q; want %q, %q", list.Name, list.CNIVersion, conf.Network.Name, conf.Network.CNIVersion)
			}
			var c bytes.Buffer
			if err := json.Compact(&c, []byte(tt.conf)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{c.String(), string(entry)}, pluginsOf(t, out)); diff != "" {
				t.Errorf("plugins (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFightBackoff(t *testing.T) {
	tests := []struct {
		streak int
		want   time.Duration
	}{
		{1, 0}, {2, 0}, {3, time.Second}, {4, 2 * time.Second}, {5, 4 * time.Second}, {8, 32 * time.Second},
		{9, time.Minute}, {100, time.Minute},
	}
	for _, tt := range tests {
		if got := fightBackoff(tt.streak, 3, time.Second, time.Minute); got != tt.want {
			t.Errorf("fightBackoff(%d) = %v, want %v", tt.streak, got, tt.want)
		}
	}
}

// FuzzInsertRemove checks that removing the entry InsertEntry added gives back the input, byte for
// byte, for any conflist without an entry of ours.
func FuzzInsertRemove(f *testing.F) {
	entry := mustEntry(f, testEntry)
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}`,
		"{\n  \"plugins\": [\n    {\n      \"type\": \"calico\"\n    }\n  ]\n}\n",
		"{\"plugins\":[\n\t{\"type\":\"a\"} ,\n\t{\"type\":\"b\",\n\t \"x\":[1,2]}\r\n]}",
		`{"plugins":[]}`,
		`{"plugins":[1, "two", null, [3]], "plugins": [{"type":"x"}]}`,
		` { "a" : "]" , "plugins" : [ { "type" : "\"}" } ] } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := findPlugins(data)
		if err != nil || ourIndex(data, l) >= 0 {
			return
		}
		out, err := InsertEntry(data, entry)
		if err != nil {
			t.Fatalf("InsertEntry(%q): %v", data, err)
		}
		if !json.Valid(out) {
			t.Fatalf("InsertEntry(%q) is not JSON: %q", data, out)
		}
		if _, same, err := FindEntry(out, entry); err != nil || !same {
			t.Fatalf("InsertEntry(%q) = %q: entry not found (%v)", data, out, err)
		}
		back, err := RemoveEntry(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, data) {
			t.Fatalf("RemoveEntry(InsertEntry(%q)) = %q", data, back)
		}
		if !strings.HasSuffix(strings.TrimSpace(string(out)), "}") {
			t.Fatalf("InsertEntry(%q) = %q", data, out)
		}
	})
}

func TestOriginalRecord(t *testing.T) {
	entry := mustEntry(t, testEntry)
	// Bytes a JSON string could not carry: invalid UTF-8, CR, a trailing blank line.
	conf := []byte("{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"ptp\",\"x\":\"\xff\"}\r\n\n")
	list, err := ConfToConflist(conf, entry)
	if err != nil {
		t.Fatal(err)
	}
	out, err := AddOriginal(list, "10-ptp.json", 0o640, conf)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "conf-with-original", out)

	got, ok := readOriginal("/etc/cni/net.d/10-ptp.conflist", out)
	if !ok {
		t.Fatal("record not read back")
	}
	if got.path != "/etc/cni/net.d/10-ptp.json" || !bytes.Equal(got.data, conf) || got.mode != 0o640 {
		t.Errorf("record = %q %q %v", got.path, got.data, got.mode)
	}
	if _, ok := readOriginal("/etc/cni/net.d/20-other.conflist", out); ok {
		t.Error("record of another conflist's original accepted")
	}
	if back, err := RemoveOriginal(out); err != nil || !bytes.Equal(back, list) {
		t.Errorf("RemoveOriginal(AddOriginal(l)) = %q, %v; want l", back, err)
	}
	if back, err := RemoveOriginal(list); err != nil || !bytes.Equal(back, list) {
		t.Errorf("RemoveOriginal without a record = %q, %v", back, err)
	}

	// Runtimes load it as they load the conflist without the record, and plugins never see it.
	l, err := libcni.ConfListFromBytes(out)
	if err != nil {
		t.Fatalf("libcni rejects the conflist with the record: %v", err)
	}
	for _, p := range l.Plugins {
		if bytes.Contains(p.Bytes, []byte(OriginalKey)) {
			t.Errorf("plugin %s is given the record: %s", p.Network.Type, p.Bytes)
		}
	}
	if found, same, err := FindEntry(out, entry); !found || !same || err != nil {
		t.Errorf("FindEntry = %v, %v, %v", found, same, err)
	}
}

func TestReadOriginalRejects(t *testing.T) {
	const path = "/net.d/10-a.conflist"
	for name, rec := range map[string]string{
		"other dir":      `{"file":"../10-a.conf","mode":"0644","data":"e30="}`,
		"conflist":       `{"file":"10-a.conflist","mode":"0644","data":"e30="}`,
		"other name":     `{"file":"10-b.conf","mode":"0644","data":"e30="}`,
		"mode not octal": `{"file":"10-a.conf","mode":"rw","data":"e30="}`,
		"mode too big":   `{"file":"10-a.conf","mode":"04755","data":"e30="}`,
		"no data":        `{"file":"10-a.conf","mode":"0644"}`,
		"not base64":     `{"file":"10-a.conf","mode":"0644","data":"{}"}`,
		"not an object":  `"10-a.conf"`,
	} {
		data := `{"name":"n","plugins":[{"type":"ptp"}],"` + OriginalKey + `":` + rec + `}`
		if o, ok := readOriginal(path, []byte(data)); ok {
			t.Errorf("%s: record accepted: %+v", name, o)
		}
	}
}

func TestRemoveOriginalKeepsOthers(t *testing.T) {
	for in, want := range map[string]string{
		`{"` + OriginalKey + `":{},"name":"n","plugins":[]}`:                        `{"name":"n","plugins":[]}`,
		"{\"name\":\"n\",\n \"" + OriginalKey + "\" : 1 ,\n \"plugins\":[]}":        "{\"name\":\"n\" ,\n \"plugins\":[]}",
		`{"name":"n","plugins":[],"` + OriginalKey + `":1,"` + OriginalKey + `":2}`: `{"name":"n","plugins":[]}`,
		`{"` + OriginalKey + `":{"a":"}"}}`:                                         `{}`,
	} {
		got, err := RemoveOriginal([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("RemoveOriginal(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}
