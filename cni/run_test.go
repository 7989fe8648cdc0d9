package cni

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/shuntmesh/shunt/cni/shim"
)

// request is the shim's request for a command with conf on stdin, as a runtime sets it up.
func request(command string, conf []byte, netns string) *shim.Request {
	return &shim.Request{Command: command, ContainerID: "c1", Netns: netns, IfName: "eth0", Args: podArgs,
		Path: "/opt/cni/bin", Stdin: conf}
}

func TestRunAddPrintsResult(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	netns := t.TempDir() // a path that is not the test's own namespace
	resp := f.Run(request("ADD", withPrev(t, ""), netns))
	if resp.Failed {
		t.Fatalf("ADD failed: %s", resp.Output)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(resp.Output, &res); err != nil {
		t.Fatalf("ADD output %q: %v", resp.Output, err)
	}
	if res.CNIVersion != "1.0.0" || len(res.IPs) != 2 || res.IPs[0].Address != "10.1.0.5/24" {
		t.Errorf("ADD passed on %+v, want the previous result", res)
	}
	if f.applied() == nil {
		t.Error("ADD in the agent applied no plan")
	}
	if f.gets != 1 {
		t.Errorf("pod read %d times, want 1", f.gets)
	}
}

func TestRunDel(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	resp := f.Run(request("DEL", netConf(t, ""), ""))
	if resp.Failed || len(resp.Output) != 0 {
		t.Fatalf("DEL with no namespace: failed %v, output %q; want success and no output", resp.Failed, resp.Output)
	}
}

// Every input skel refuses for an executed plugin is refused in the agent too, as a CNI error.
func TestRunRejectsBadInput(t *testing.T) {
	netns := "/var/run/netns/x"
	for _, tc := range []struct {
		name string
		req  func(t *testing.T) *shim.Request
		code uint
		msg  string
	}{
		{"unknown command", func(t *testing.T) *shim.Request { return request("GC", netConf(t, ""), netns) },
			types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND"},
		{"no netns for ADD", func(t *testing.T) *shim.Request { return request("ADD", withPrev(t, ""), "") },
			types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"no container ID", func(t *testing.T) *shim.Request {
			r := request("ADD", withPrev(t, ""), netns)
			r.ContainerID = ""
			return r
		}, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"bad interface name", func(t *testing.T) *shim.Request {
			r := request("ADD", withPrev(t, ""), netns)
			r.IfName = "eth0/x"
			return r
		}, types.ErrInvalidEnvironmentVariables, "interface name"},
		{"no network name", func(t *testing.T) *shim.Request {
			return request("ADD", []byte(`{"cniVersion":"1.0.0","type":"shunt-cni"}`), netns)
		}, types.ErrInvalidNetworkConfig, "missing network name"},
		{"unsupported version", func(t *testing.T) *shim.Request {
			return request("ADD", []byte(`{"cniVersion":"9.9.9","name":"k8s","type":"shunt-cni"}`), netns)
		}, types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"CHECK before 0.4.0", func(t *testing.T) *shim.Request {
			return request("CHECK", []byte(`{"cniVersion":"0.3.1","name":"k8s","type":"shunt-cni"}`), netns)
		}, types.ErrIncompatibleCNIVersion, "does not allow CHECK"},
		{"bad configuration", func(t *testing.T) *shim.Request {
			return request("ADD", netConf(t, `,"backend":"ebpf","prevResult":`+prevV4V6), netns)
		}, types.ErrInvalidNetworkConfig, "backend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, meshedPod(nil), nil)
			resp := f.Run(tc.req(t))
			if !resp.Failed {
				t.Fatalf("succeeded with %q, want CNI error %d", resp.Output, tc.code)
			}
			var e types.Error
			if err := json.Unmarshal(resp.Output, &e); err != nil {
				t.Fatalf("output %q is not a CNI error: %v", resp.Output, err)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Errorf("error %+v, want code %d mentioning %q", e, tc.code, tc.msg)
			}
			if f.applied() != nil {
				t.Error("rules applied for a refused command")
			}
		})
	}
}

// ADD into the agent's own namespace is refused: the rules would capture the node's traffic.
func TestRunRefusesOwnNamespace(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	resp := f.Run(request("ADD", withPrev(t, ""), "/proc/self/ns/net"))
	if !resp.Failed || !strings.Contains(string(resp.Output), "should not be the same") {
		t.Fatalf("ADD into the agent's namespace: failed %v, %s", resp.Failed, resp.Output)
	}
	if f.applied() != nil {
		t.Error("rules applied in the agent's own namespace")
	}
}
