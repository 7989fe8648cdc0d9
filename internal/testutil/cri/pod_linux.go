package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// PodMeta is what kubelet takes from the Pod object for its sandbox.
type PodMeta struct {
	Namespace, Name, UID string
	Labels, Annotations  map[string]string
}

// SandboxConfig returns the PodSandboxConfig kubelet sends for a pod: metadata, hostname, log
// directory, the pod's labels (with kubelet's own) and annotations, no port mappings, and a Linux
// cgroup parent (cgroupfs, under the node's) and security context with the pod's network and IPC
// namespaces and one PID namespace per container.
func (n *Node) SandboxConfig(m PodMeta) *runtimeapi.PodSandboxConfig {
	labels := map[string]string{
		"io.kubernetes.pod.name":      m.Name,
		"io.kubernetes.pod.namespace": m.Namespace,
		"io.kubernetes.pod.uid":       m.UID,
	}
	maps.Copy(labels, m.Labels)
	annotations := map[string]string{"kubernetes.io/config.source": "api"}
	maps.Copy(annotations, m.Annotations)
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: m.Name, Namespace: m.Namespace, Uid: m.UID},
		Hostname:     m.Name,
		LogDirectory: filepath.Join(n.Dir, "pods", m.Namespace+"_"+m.Name+"_"+m.UID),
		Labels:       labels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: n.CgroupParent + "/pod" + m.UID,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_POD,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
				Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
			},
		},
	}
}

// Pod is a running pod sandbox.
type Pod struct {
	// ID is the sandbox's id, which containerd passes to CNI as CNI_CONTAINERID.
	ID     string
	Config *runtimeapi.PodSandboxConfig
	// NetNSPath is the network namespace containerd made for the sandbox (and passed to CNI).
	NetNSPath string
	// NetNS names it under /run/netns (a link this node removes), for the tests' helpers that
	// run commands in a namespace.
	NetNS *testutil.NetNS
	// IP is the pod's IPv4 address, as CRI reports it.
	IP string

	node *Node
}

// RunPod runs a sandbox for cfg (RunPodSandbox: containerd makes the namespace and runs the CNI
// ADD of its network) and returns it, or the error RunPodSandbox returned.
func (n *Node) RunPod(t testing.TB, cfg *runtimeapi.PodSandboxConfig) (*Pod, error) {
	t.Helper()
	if err := os.MkdirAll(cfg.LogDirectory, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	r, err := n.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, err
	}
	p := &Pod{ID: r.PodSandboxId, Config: cfg, node: n}
	st := p.Status(t)
	if st.Status.Network != nil {
		p.IP = st.Status.Network.Ip
	}
	p.NetNSPath = p.netnsPath(t)
	p.NetNS = n.link(t, func(string) string { return p.NetNSPath })
	return p, nil
}

// link names the namespace at target(name) under /run/netns, as name, and returns it. The node
// removes the link when it stops.
func (n *Node) link(t testing.TB, target func(name string) string) *testutil.NetNS {
	t.Helper()
	n.mu.Lock()
	n.podSeq++
	name := fmt.Sprintf("%s-%d", n.name, n.podSeq)
	link := filepath.Join("/run/netns", name)
	n.netnses = append(n.netnses, link)
	n.mu.Unlock()
	if err := os.Symlink(target(name), link); err != nil {
		t.Fatal(err)
	}
	return &testutil.NetNS{Name: name, LockFile: filepath.Join(n.Dir, "xtables.lock")}
}

// MustRunPod is RunPod failing t on error.
func (n *Node) MustRunPod(t testing.TB, cfg *runtimeapi.PodSandboxConfig) *Pod {
	t.Helper()
	p, err := n.RunPod(t, cfg)
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v", cfg.Metadata.Namespace, cfg.Metadata.Name, err)
	}
	return p
}

// Status returns the sandbox's verbose PodSandboxStatus.
func (p *Pod) Status(t testing.TB) *runtimeapi.PodSandboxStatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	st, err := p.node.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", p.ID, err)
	}
	return st
}

// sandboxInfo is the part of containerd's verbose sandbox status the tests read.
type sandboxInfo struct {
	RuntimeSpec struct {
		Linux struct {
			Namespaces []struct{ Type, Path string } `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
	NetNSClosed bool `json:"netNamespaceClosed"`
}

// Info returns containerd's verbose status "info" of the sandbox.
func (p *Pod) info(t testing.TB) sandboxInfo {
	t.Helper()
	var info sandboxInfo
	raw := p.Status(t).Info["info"]
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		t.Fatalf("sandbox %s info: %v\n%s", p.ID, err, raw)
	}
	return info
}

func (p *Pod) netnsPath(t testing.TB) string {
	t.Helper()
	for _, ns := range p.info(t).RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	t.Fatalf("sandbox %s: no network namespace in its runtime spec", p.ID)
	return ""
}

// NetNSClosed reports whether containerd shows the sandbox's network namespace closed.
func (p *Pod) NetNSClosed(t testing.TB) bool {
	t.Helper()
	return p.info(t).NetNSClosed
}

// Stop runs StopPodSandbox: containerd stops the containers and runs the CNI DEL.
func (p *Pod) Stop(t testing.TB) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	_, err := p.node.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID})
	return err
}

// Remove runs RemovePodSandbox.
func (p *Pod) Remove(t testing.TB) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	_, err := p.node.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID})
	return err
}

// Container is a container of a pod as kubelet describes it from the Pod's spec.
type Container struct {
	Name  string
	Image Image
	// Command replaces the image's entrypoint when set; Args are its arguments.
	Command, Args []string
	Env           map[string]string
	// RunAsUser and RunAsGroup are the security context's; nil leaves the image's (root).
	RunAsUser, RunAsGroup *int64
	// CapAdd and CapDrop are the security context's capabilities (NET_ADMIN, ALL, ...).
	CapAdd, CapDrop []string
	// NoNewPrivs is allowPrivilegeEscalation: false.
	NoNewPrivs bool
	// ReadonlyRootfs is readOnlyRootFilesystem.
	ReadonlyRootfs bool
	// Attempt is kubelet's restart count of the container: a re-run of an init container is
	// attempt 1.
	Attempt uint32
}

// Int64 returns a pointer to v, for Container's identities.
func Int64(v int64) *int64 { return &v }

// config returns the ContainerConfig kubelet sends for c.
func (p *Pod) config(c Container) *runtimeapi.ContainerConfig {
	var envs []*runtimeapi.KeyValue
	for k, v := range c.Env {
		envs = append(envs, &runtimeapi.KeyValue{Key: k, Value: []byte(v)})
	}
	sc := &runtimeapi.LinuxContainerSecurityContext{
		Capabilities: &runtimeapi.Capability{AddCapabilities: c.CapAdd, DropCapabilities: c.CapDrop},
		NamespaceOptions: &runtimeapi.NamespaceOption{
			Network: runtimeapi.NamespaceMode_POD,
			Pid:     runtimeapi.NamespaceMode_CONTAINER,
			Ipc:     runtimeapi.NamespaceMode_POD,
		},
		NoNewPrivs:     c.NoNewPrivs,
		ReadonlyRootfs: c.ReadonlyRootfs,
		Seccomp:        &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		MaskedPaths: []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
			"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
		ReadonlyPaths: []string{"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
	}
	if c.RunAsUser != nil {
		sc.RunAsUser = &runtimeapi.Int64Value{Value: *c.RunAsUser}
	}
	if c.RunAsGroup != nil {
		sc.RunAsGroup = &runtimeapi.Int64Value{Value: *c.RunAsGroup}
	}
	m := p.Config.Metadata
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: c.Attempt},
		Image:    &runtimeapi.ImageSpec{Image: c.Image.Ref, UserSpecifiedImage: c.Image.Ref},
		Command:  c.Command,
		Args:     c.Args,
		Envs:     envs,
		Labels: map[string]string{
			"io.kubernetes.container.name": c.Name,
			"io.kubernetes.pod.name":       m.Name,
			"io.kubernetes.pod.namespace":  m.Namespace,
			"io.kubernetes.pod.uid":        m.Uid,
		},
		Annotations: map[string]string{
			"io.kubernetes.container.restartCount":           fmt.Sprint(c.Attempt),
			"io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
		},
		LogPath: filepath.Join(c.Name, fmt.Sprintf("%d.log", c.Attempt)),
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       &runtimeapi.LinuxContainerResources{CpuShares: 2, OomScoreAdj: 1000},
			SecurityContext: sc,
		},
	}
}

// Start creates and starts c in the pod (CreateContainer, StartContainer) and returns its id.
func (p *Pod) Start(t testing.TB, c Container) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	r, err := p.node.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.ID, Config: p.config(c), SandboxConfig: p.Config,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s in %s: %v", c.Name, p.Config.Metadata.Name, err)
	}
	if _, err := p.node.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: r.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s in %s: %v\n%s", c.Name, p.Config.Metadata.Name, err, p.Logs(c))
	}
	return r.ContainerId
}

// Logs returns what c wrote, as containerd logs it (CRI log format: time, stream, tag, line).
func (p *Pod) Logs(c Container) string {
	b, err := os.ReadFile(filepath.Join(p.Config.LogDirectory, c.Name, fmt.Sprintf("%d.log", c.Attempt)))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// settleLogs waits until c's log stops growing: containerd copies a container's output to the log
// after CRI shows it exited.
func (p *Pod) settleLogs(c Container) {
	path := filepath.Join(p.Config.LogDirectory, c.Name, fmt.Sprintf("%d.log", c.Attempt))
	size, same := int64(-1), 0
	for deadline := time.Now().Add(2 * time.Second); same < 5 && time.Now().Before(deadline); {
		var now int64
		if fi, err := os.Stat(path); err == nil {
			now = fi.Size()
		}
		if now > 0 && now == size {
			same++
		} else {
			same = 0
		}
		size = now
		time.Sleep(10 * time.Millisecond)
	}
}

// StartReady starts c and waits until it writes the line "ready" to standard output.
func (p *Pod) StartReady(t testing.TB, c Container) string {
	t.Helper()
	id := p.Start(t, c)
	deadline := time.Now().Add(testutil.ReadyTimeout)
	for {
		for _, l := range strings.Split(p.Logs(c), "\n") {
			if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[1] == "stdout" && f[3] == "ready" {
				return id
			}
		}
		if st := p.node.containerStatus(t, id); st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Fatalf("%s exited (%d, %s) before ready:\n%s", c.Name, st.ExitCode, st.Reason, p.Logs(c))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v:\n%s", c.Name, testutil.ReadyTimeout, p.Logs(c))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run starts c and waits until it exits and its log is complete; it returns the exit code.
func (p *Pod) Run(t testing.TB, c Container) int32 {
	t.Helper()
	id := p.Start(t, c)
	deadline := time.Now().Add(CallTimeout)
	for {
		st := p.node.containerStatus(t, id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			p.settleLogs(c)
			return st.ExitCode
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %v after %v:\n%s", c.Name, st.State, CallTimeout, p.Logs(c))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *Node) containerStatus(t testing.TB, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	r, err := n.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return r.Status
}

// Exec runs cmd in the container id (ExecSync) and returns its standard output and exit code; a
// failed call fails t.
func (n *Node) Exec(t testing.TB, id string, cmd ...string) (stdout, stderr string, code int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	r, err := n.Runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync %v in %s: %v", cmd, id, err)
	}
	return string(r.Stdout), string(r.Stderr), r.ExitCode
}

// Hold bind-mounts the sandbox's network namespace under the node's directory and returns it by a
// name under /run/netns, so that it outlives the sandbox: what DEL left in it can be read after
// StopPodSandbox removed containerd's own mount. The node undoes the mount when t's test ends.
func (p *Pod) Hold(t testing.TB) *testutil.NetNS {
	t.Helper()
	return p.node.link(t, func(name string) string {
		held := filepath.Join(p.node.Dir, "held", name)
		if err := os.MkdirAll(filepath.Dir(held), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(held, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount(p.NetNSPath, held, "", syscall.MS_BIND, ""); err != nil {
			t.Fatalf("hold %s: %v", p.NetNSPath, err)
		}
		return held
	})
}
