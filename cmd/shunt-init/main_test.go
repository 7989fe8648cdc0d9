package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLean guards what the init container's binary links: none of the node's libraries, whose package
// initialisation runs before main at every pod start.
func TestLean(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery", "github.com/prometheus/",
			"github.com/cilium/ebpf", "github.com/shuntmesh/shunt/command/node", "github.com/shuntmesh/shunt/cni/install",
			"github.com/shuntmesh/shunt/ebpf", "google.golang.org/protobuf", "net/http",
			// The Pod manifest decoding of --pod, which only the operator's binary offers.
			"github.com/shuntmesh/shunt/cni/meshpod", "go.yaml.in/yaml", "sigs.k8s.io/yaml", "gopkg.in/yaml.v2", "gopkg.in/yaml.v3"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") || strings.HasPrefix(banned, "github.com/prometheus/") && strings.HasPrefix(dep, banned) {
				t.Errorf("shunt-init links %s", dep)
			}
		}
	}
}
