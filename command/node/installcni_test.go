package node

import "testing"

func TestDaemonSetPrefix(t *testing.T) {
	for name, want := range map[string]string{
		"shunt-cni-7xk2p": "shunt-cni-",
		"shunt-7xk2p":     "shunt-",
		"shunt":           "",
		"":                "",
		"-x":              "",
	} {
		if got := daemonSetPrefix(name); got != want {
			t.Errorf("daemonSetPrefix(%q) = %q, want %q", name, got, want)
		}
	}
}
