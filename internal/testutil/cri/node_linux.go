package cri

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// Timeouts of Start, of one CRI call and of stopping containerd.
const (
	ReadyTimeout = time.Minute      // containerd's socket answers Version
	CallTimeout  = 2 * time.Minute  // one CRI call: RunPodSandbox runs the whole CNI chain
	StopTimeout  = 10 * time.Second // from SIGTERM to SIGKILL
)

// Options configure Start.
type Options struct {
	// CNIBinDir and CNIConfDir are the CRI plugin's cni bin_dir and conf_dir.
	CNIBinDir, CNIConfDir string
	// Images builds the sandbox image.
	Images *Images
	// Import are imported besides the sandbox image.
	Import []Image
}

// Node is a containerd serving CRI in a node network namespace of its own. Its CNI plugins and
// shims run in that namespace; the pods' namespaces are bind mounts under its state directory.
type Node struct {
	// NetNS is the node's network namespace.
	NetNS *testutil.NetNS
	// Runtime and Image are CRI v1 clients of containerd.
	Runtime runtimeapi.RuntimeServiceClient
	Image   runtimeapi.ImageServiceClient
	// Socket is containerd's gRPC socket, Dir holds its root, state, configuration, log and the
	// pods' log directories.
	Socket, Dir string
	// Snapshotter is the snapshotter containerd unpacks images with: overlayfs where this
	// filesystem can take it, else native.
	Snapshotter string
	// CgroupParent is the cgroup every sandbox of this node is created under (cgroupfs).
	CgroupParent string

	name    string
	logPath string
	conn    *grpc.ClientConn
	proc    *os.Process
	exited  chan struct{}
	mu      sync.Mutex
	podSeq  int
	netnses []string // links under /run/netns this node made
}

// staleName matches what Start names after its test process: the directory, the cgroup parent
// and the pods' links under /run/netns.
var staleName = regexp.MustCompile(`^shunt-cri-(\d+)-`)

// Start starts containerd in a fresh node network namespace, imports the sandbox image and
// opts.Import, and stops everything it made when t ends: every sandbox is stopped and removed
// through CRI, then containerd, the shims and any container process left are killed, every mount
// under its directories is undone and the directories, cgroups and namespaces are removed.
// Leftovers of test processes that no longer run are removed first. It skips t unless root.
//
// Nothing lands in containerd's system paths but the shims' sockets: containerd 1.6 puts them in
// /run/containerd/s, named by a hash of its own socket's path (so they never collide with a
// system containerd's); each shim removes its socket when it exits, and the cleanup those of the
// shims it has to kill.
func Start(t testing.TB, opts Options) *Node {
	t.Helper()
	testutil.RequireRoot(t)
	begin := time.Now()
	if err := RemoveStale(); err != nil {
		t.Logf("remove stale containerd nodes: %v", err)
	}
	pause := opts.Images.Pause(t)

	dir, err := os.MkdirTemp("", fmt.Sprintf("shunt-cri-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{NetNS: testutil.NewNetNS(t), Dir: dir, name: filepath.Base(dir), exited: make(chan struct{})}
	n.Socket = filepath.Join(dir, "state", "containerd.sock")
	n.logPath = filepath.Join(dir, "containerd.log")
	n.CgroupParent = "/" + n.name
	t.Cleanup(func() { n.stop(t) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n.Snapshotter = "native"
	if overlayWorks(dir) {
		n.Snapshotter = "overlayfs"
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		runc = "/usr/sbin/runc" // Debian's; not on a non-root PATH
	}
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(configTemplate,
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), n.Socket, filepath.Join(dir, "state", "ttrpc.sock"),
		pause.Ref, opts.CNIBinDir, opts.CNIConfDir, n.Snapshotter, runc, filepath.Join(dir, "state", "runc"))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.startContainerd(config); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	if err := n.connect(); err != nil {
		t.Fatalf("containerd: %v\n%s", err, n.logTail(40))
	}
	for _, img := range append([]Image{pause}, opts.Import...) {
		n.importImage(t, img)
	}
	t.Logf("containerd (%s) ready in %s, snapshotter %s, in %v", n.version(t), n.NetNS.Name, n.Snapshotter, time.Since(begin).Round(time.Millisecond))
	return n
}

const configTemplate = `version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "debug"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
        Root = %q
        SystemdCgroup = false
`

// overlayWorks reports whether an overlay mount can be made under dir, as the overlayfs
// snapshotter makes them.
func overlayWorks(dir string) bool {
	probe := filepath.Join(dir, "overlay-probe")
	defer os.RemoveAll(probe)
	var d [4]string
	for i, name := range []string{"lower", "upper", "work", "merged"} {
		d[i] = filepath.Join(probe, name)
		if err := os.MkdirAll(d[i], 0o755); err != nil {
			return false
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", d[0], d[1], d[2])
	if err := syscall.Mount("overlay", d[3], "overlay", 0, opts); err != nil {
		return false
	}
	return syscall.Unmount(d[3], 0) == nil
}

// startContainerd starts containerd in the node's namespace from a thread that stays alive until
// containerd exits: containerd dies with it (the parent-death signal fires when that thread ends),
// also when the test binary is killed.
func (n *Node) startContainerd(config string) error {
	log, err := os.Create(n.logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command("containerd", "--config", config)
	cmd.Stdout, cmd.Stderr = log, log
	// runc and the shim are looked up on PATH; Debian puts runc in /usr/sbin.
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is in the node's namespace
		defer log.Close()
		if err := enterNetNS(n.NetNS.Path()); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		n.proc = cmd.Process
		started <- nil
		_ = cmd.Wait()
		close(n.exited)
	}()
	return <-started
}

func enterNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// connect dials containerd's socket and waits until CRI answers Version.
func (n *Node) connect() error {
	conn, err := grpc.NewClient("unix://"+n.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	n.conn = conn
	n.Runtime = runtimeapi.NewRuntimeServiceClient(conn)
	n.Image = runtimeapi.NewImageServiceClient(conn)
	deadline := time.Now().Add(ReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := n.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-n.exited:
			return errors.New("containerd exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no CRI answer on %s after %v: %w", n.Socket, ReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *Node) version(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	v, err := n.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatalf("CRI Version: %v", err)
	}
	return v.RuntimeName + " " + v.RuntimeVersion + ", CRI " + v.RuntimeApiVersion
}

// importImage imports img into the CRI namespace (k8s.io) with ctr, which comes with containerd.
func (n *Node) importImage(t testing.TB, img Image) {
	t.Helper()
	out, err := exec.Command("ctr", "--address", n.Socket, "-n", "k8s.io", "images", "import", img.Tar).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", img.Tar, err, out)
	}
	// CRI learns of the image from containerd's events: wait until it shows it.
	deadline := time.Now().Add(ReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
		st, err := n.Image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img.Ref}})
		cancel()
		if err == nil && st.Image != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI does not show image %s after import: %v", img.Ref, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitNetworkReady waits until CRI reports the network ready: containerd has loaded a CNI
// configuration from its conf_dir.
func (n *Node) WaitNetworkReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(ReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
		st, err := n.Runtime.Status(ctx, &runtimeapi.StatusRequest{})
		cancel()
		if err != nil {
			t.Fatalf("CRI Status: %v", err)
		}
		for _, c := range st.Status.Conditions {
			if c.Type == runtimeapi.NetworkReady && c.Status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI network not ready after %v: %v", ReadyTimeout, st.Status.Conditions)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CNIConfig returns the CNI configuration containerd's CRI plugin has loaded, as its verbose
// Status shows it (JSON: the networks, each with its plugins' configuration bytes).
func (n *Node) CNIConfig(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	st, err := n.Runtime.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatalf("CRI Status: %v", err)
	}
	return st.Info["cniconfig"]
}

// Log returns containerd's log.
func (n *Node) Log() string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func (n *Node) logTail(lines int) string {
	l := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// Do runs fn on a thread in the node's namespace.
func (n *Node) Do(fn func() error) error { return netns.Do(n.NetNS.Path(), fn) }

// stop removes every sandbox through CRI, then kills containerd and what it left, and removes its
// mounts, directories, cgroups and pod namespace links.
func (n *Node) stop(t testing.TB) {
	if t.Failed() {
		t.Logf("containerd log (%s), last lines:\n%s", n.logPath, n.logTail(80))
	}
	if n.conn != nil && n.proc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
		if pods, err := n.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				if _, err := n.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("cleanup: StopPodSandbox %s: %v", p.Id, err)
				}
				if _, err := n.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("cleanup: RemovePodSandbox %s: %v", p.Id, err)
				}
			}
		} else {
			t.Errorf("cleanup: ListPodSandbox: %v", err)
		}
		cancel()
	}
	if n.conn != nil {
		_ = n.conn.Close()
	}
	if n.proc != nil {
		_ = n.proc.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(StopTimeout):
			_ = n.proc.Kill()
			<-n.exited
		}
	}
	for _, l := range n.netnses {
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	}
	if err := removeNode(n.Dir, n.name); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// RemoveStale removes what Start left of test processes that no longer run (killed before their
// cleanups ran): it kills their shims and container processes, undoes their mounts and removes
// their directories, cgroups and links under /run/netns.
func RemoveStale() error {
	var errs []error
	stale := func(name string) bool {
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		_, err := os.Stat(filepath.Join("/proc", m[1]))
		return errors.Is(err, os.ErrNotExist)
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if stale(e.Name()) {
				errs = append(errs, os.Remove(filepath.Join("/run/netns", e.Name())))
			}
		}
	}
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() && stale(e.Name()) {
			errs = append(errs, removeNode(filepath.Join(os.TempDir(), e.Name()), e.Name()))
		}
	}
	for _, root := range cgroupRoots() {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() && stale(e.Name()) {
				errs = append(errs, removeCgroup(filepath.Join(root, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}

// removeNode kills the containerd and shims that name dir on their command line and every process
// in the cgroups called name, removes the sockets of those shims, unmounts everything under dir and
// removes it and the cgroups.
func removeNode(dir, name string) error {
	var errs []error
	for _, p := range containerdProcesses(dir) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		// A killed shim leaves its socket.
		if sock := p.shimSocket(); sock != "" {
			if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, root := range cgroupRoots() {
		if err := removeCgroup(filepath.Join(root, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range slices.Backward(mounts) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// shimSocketDir is where containerd 1.6's shims put their sockets, whatever containerd's state
// directory.
const shimSocketDir = "/run/containerd/s"

// process is a running process and its command line.
type process struct {
	pid  int
	args []string
}

// flag returns the value of the command line's flag name ("-id VALUE"), or "".
func (p process) flag(name string) string {
	if i := slices.Index(p.args, name); i >= 0 && i+1 < len(p.args) {
		return p.args[i+1]
	}
	return ""
}

// shimSocket returns the socket of the shim p, or "" when p is no shim: containerd 1.6 names it by
// a hash of containerd's address, the namespace and the sandbox id.
func (p process) shimSocket() string {
	addr, ns, id := p.flag("-address"), p.flag("-namespace"), p.flag("-id")
	if addr == "" || ns == "" || id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(filepath.Join(addr, ns, id)))
	return filepath.Join(shimSocketDir, hex.EncodeToString(sum[:]))
}

// containerdProcesses returns the containerd and shim processes with s in their command line.
func containerdProcesses(s string) []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "containerd") {
			out = append(out, process{pid: pid, args: args})
		}
	}
	return out
}

// cgroupRoots returns the mount points of every cgroup hierarchy, v1 and v2.
func cgroupRoots() []string {
	var roots []string
	_ = eachMount(func(point, fstype string) {
		if fstype == "cgroup" || fstype == "cgroup2" {
			roots = append(roots, point)
		}
	})
	return roots
}

// removeCgroup kills the processes of the cgroup dir and its descendants, then removes them,
// deepest first.
func removeCgroup(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return err
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	deadline := time.Now().Add(StopTimeout)
	for _, d := range slices.Backward(dirs) {
		for {
			procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(procs)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", d, err)
			}
			time.Sleep(10 * time.Millisecond) // killed processes leave the cgroup when reaped
		}
	}
	return nil
}

// mountsUnder returns the mount points at or below dir, in mount order.
func mountsUnder(dir string) ([]string, error) {
	var out []string
	err := eachMount(func(point, _ string) {
		if point == dir || strings.HasPrefix(point, dir+"/") {
			out = append(out, point)
		}
	})
	return out, err
}

// eachMount calls fn with the mount point and filesystem type of each line of
// /proc/self/mountinfo. Points are as mountinfo escapes them (\040 for a space): the node's
// directories and the cgroup hierarchies hold no character it escapes.
func eachMount(fn func(point, fstype string)) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		fn(fields[4], fields[sep+1])
	}
	return sc.Err()
}
