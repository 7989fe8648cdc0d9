package kube

import (
	"os"
	"strconv"
	"syscall"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/shuntmesh/shunt/internal/testutil"
)

func TestInNetNS(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := Start(t, InNetNS(ns.Path()))

	if _, err := c.Client.CoreV1().Namespaces().Get(t.Context(), metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace default through the namespace's loopback: %v", err)
	}
	want := inode(t, ns.Path())
	for name, p := range map[string]*proc{"etcd": c.etcd, "kube-apiserver": c.apiserver} {
		if got := inode(t, "/proc/"+strconv.Itoa(p.cmd.Process.Pid)+"/ns/net"); got != want {
			t.Errorf("%s runs in network namespace %v, want %v (%s)", name, got, want, ns.Path())
		}
	}
}

func inode(t *testing.T, path string) [2]uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return [2]uint64{st.Dev, st.Ino}
}
