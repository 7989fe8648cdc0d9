//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// pkgImage is `make image`'s builder; pkgShuntInit is the init image's binary.
const (
	pkgImage     = "github.com/shuntmesh/shunt/deploy/image"
	pkgShuntInit = "github.com/shuntmesh/shunt/cmd/shunt-init"
)

var shuntInitBinary = flag.String("shunt-init", "", "put this shunt-init binary into the init image instead of building ./cmd/shunt-init")

// What TestImage builds: `make image` with these flags.
const (
	imageRepo     = "ghcr.io/shuntmesh/shunt"
	initImageRepo = imageRepo + "-init"
	imageTag      = "e2e"
	imageRevision = "0123456789abcdef0123456789abcdef01234567"
	imageEpoch    = 1700000000 // SOURCE_DATE_EPOCH
)

// linkedOnlyByNode are modules the node's binary links and the init container's must not: the
// Kubernetes client, Prometheus' client library, the eBPF loader.
var linkedOnlyByNode = []string{"k8s.io/client-go", "github.com/prometheus/client_golang", "github.com/cilium/ebpf"}

// TestImage builds the two container images `make image` makes and proves them. The init image
// holds a static shunt-init alone, as /shunt-init, its entrypoint; the node image a static shunt
// alone, as /shunt. Each is an OCI image layout with one image for linux/GOARCH whose single layer
// holds the one file, mode 0755, owned by root; the config starts it; the same inputs give the same
// bytes. Chrooted into the unpacked init image with nothing else in the file system, started as
// Istio's injector starts it (args: istio-iptables ...), shunt-init prints its help and its rules
// and programs a fresh network namespace without any iptables tool (root).
func TestImage(t *testing.T) {
	images := []*testImage{
		buildTestImage(t, imageSpec{
			file: "shunt-init", repo: initImageRepo, epoch: imageEpoch,
			binary: staticBinary(t, pkgShuntInit, *shuntInitBinary, "-s -w"),
		}),
		buildTestImage(t, imageSpec{
			file: "shunt", repo: imageRepo, epoch: imageEpoch,
			binary: staticBinary(t, pkgShunt, *shuntBinary, ""),
		}),
	}
	initImg, node := images[0], images[1]
	t.Run("shunt-init", func(t *testing.T) { testInitImage(t, initImg) })
	t.Run("shunt", func(t *testing.T) { testNodeImage(t, node) })
}

// testNodeImage proves the node image: the chart's; its binary has every command.
func testNodeImage(t *testing.T, node *testImage) {
	testImageLayout(t, node)
	t.Run("Help", func(t *testing.T) {
		testutil.RequireRoot(t)
		out, err := runInImage(t, node, nil, "--help")
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"iptables", "install-cni", "ebpf"} {
			if !strings.Contains(out, "  "+cmd+" ") {
				t.Errorf("shunt --help in the node image lists no %s command:\n%s", cmd, out)
			}
		}
	})
}

// testInitImage proves the init image, running the init container's cases in it.
func testInitImage(t *testing.T, initImg *testImage) {
	testImageLayout(t, initImg)

	// The init image's binary is the init container's alone: it links none of the node's modules.
	t.Run("Links", func(t *testing.T) {
		info, err := buildinfo.ReadFile(filepath.Join(initImg.root, "shunt-init"))
		if err != nil {
			t.Fatal(err)
		}
		if info.Path != pkgShuntInit {
			t.Errorf("/shunt-init is built from %s, want %s", info.Path, pkgShuntInit)
		}
		for _, dep := range info.Deps {
			for _, mod := range linkedOnlyByNode {
				if dep.Path == mod {
					t.Errorf("/shunt-init links %s %s", dep.Path, dep.Version)
				}
			}
		}
	})

	// The init-container cases, in the init image.
	t.Run("Help", func(t *testing.T) {
		testutil.RequireRoot(t)
		out, err := runInImage(t, initImg, nil, "--help")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "Usage:") {
			t.Errorf("shunt-init --help in the init image:\n%s", out)
		}
		for _, cmd := range []string{"iptables", "cleanup", "validate"} {
			if !strings.Contains(out, "  "+cmd+" ") {
				t.Errorf("shunt-init --help in the init image lists no %s command:\n%s", cmd, out)
			}
		}
		for _, cmd := range []string{"install-cni", "ebpf"} {
			if strings.Contains(out, "  "+cmd+" ") {
				t.Errorf("shunt-init --help in the init image lists the node's %s command:\n%s", cmd, out)
			}
		}
	})

	t.Run("DryRun", func(t *testing.T) {
		testutil.RequireRoot(t)
		ns := testutil.NewNetNS(t)
		out, err := runInImage(t, initImg, ns, "istio-iptables", "--dry-run")
		if err != nil {
			t.Fatal(err)
		}
		for _, rule := range []string{
			"-A OUTPUT -j ISTIO_OUTPUT",
			"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
			"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
			"COMMIT",
		} {
			if !strings.Contains(out, rule+"\n") {
				t.Errorf("shunt-init istio-iptables --dry-run in the init image: no %q in\n%s", rule, out)
			}
		}
	})

	// A pod's first run, with the injector's arguments: a fresh namespace holds no tables, and
	// shunt-init programs them through the kernel's API, so the image needs no iptables tool.
	t.Run("Apply", func(t *testing.T) {
		testutil.RequireRoot(t)
		ns := testutil.NewNetNS(t)
		if out, err := runInImage(t, initImg, ns, "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
			"-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
			"--log_output_level=default:info"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		// Read back with the host's tools.
		rules := ns.Run(t, "iptables-nft-save", "-t", "nat")
		for _, rule := range []string{"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"} {
			if !strings.Contains(rules, rule+"\n") {
				t.Errorf("after shunt-init istio-iptables in the init image, no %q in\n%s", rule, rules)
			}
		}
	})
	// The init container's lifecycle in both iptables variants with nothing but the binary: kubelet
	// runs an init container again when the pod's sandbox survives (the second run must find its rules
	// in place, not fail for want of iptables-save), a changed configuration is reconciled, and cleanup
	// leaves nothing.
	for _, variant := range []string{"nft", "legacy"} {
		t.Run("Iptables/"+variant, func(t *testing.T) {
			testutil.RequireRoot(t)
			ns := testutil.NewNetNS(t)
			mountProc(t, initImg.root) // as a container runtime does
			injector := []string{"istio-iptables", "--force-iptables-binary", variant, "-p", "15001", "-z", "15006", "-u", "1337",
				"-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--ipv6=true"}
			for i, args := range [][]string{
				injector,
				injector,
				append(slices.Clone(injector), "-m", "TPROXY", "--reconcile"),
			} {
				if out, err := runInImage(t, initImg, ns, args...); err != nil {
					t.Fatalf("run %d %v: %v\n%s", i+1, args, err, out)
				}
			}
			rules := ns.Run(t, "iptables-"+variant+"-save", "-t", "mangle")
			if !strings.Contains(rules, "-j TPROXY --on-port 15006") {
				t.Errorf("after the reconcile to TPROXY in the init image, no TPROXY rule in\n%s", rules)
			}
			if out, err := runInImage(t, initImg, ns, "cleanup", "--force-iptables-binary", variant); err != nil {
				t.Fatalf("cleanup: %v\n%s", err, out)
			}
			for _, tool := range []string{"iptables-" + variant + "-save", "ip6tables-" + variant + "-save"} {
				if rules := ns.Run(t, tool); strings.Contains(rules, "ISTIO_") {
					t.Errorf("after cleanup in the init image, %s:\n%s", tool, rules)
				}
			}
		})
	}
	// Without /proc the legacy tables cannot be listed, and opening one to see would create it: the
	// init container fails, naming the cause, rather than take the tables for absent.
	t.Run("Iptables/legacy/NoProc", func(t *testing.T) {
		testutil.RequireRoot(t)
		ns := testutil.NewNetNS(t)
		ns.Run(t, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-j", "ACCEPT") // another program's rule
		out, err := runInImage(t, initImg, ns, "istio-iptables", "--force-iptables-binary", "legacy")
		if err == nil || !strings.Contains(err.Error(), "/proc is not mounted") {
			t.Fatalf("without /proc: %v\n%s\nwant a failure naming /proc", err, out)
		}
		if rules := ns.Run(t, "iptables-legacy-save", "-t", "nat"); !strings.Contains(rules, "-d 192.0.2.1/32 -j ACCEPT") || strings.Contains(rules, "ISTIO_") {
			t.Errorf("the failed run changed the tables:\n%s", rules)
		}
	})
	// The whole lifecycle of the native nftables backend works with nothing but the binary, as
	// Istio's injector runs it (args: istio-iptables ...): apply, re-run, reconcile, clean up.
	t.Run("NativeNFTables", func(t *testing.T) {
		testutil.RequireRoot(t)
		ns := testutil.NewNetNS(t)
		mountProc(t, initImg.root) // as a container runtime does; cleanup reads /proc for legacy tables
		for _, args := range [][]string{
			{"istio-iptables", "--native-nftables", "--ipv6=true"},
			{"istio-iptables", "--native-nftables", "--ipv6=true"},
			{"iptables", "--native-nftables", "--ipv6=true", "-m", "TPROXY", "--reconcile"},
		} {
			if out, err := runInImage(t, initImg, ns, args...); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
		rules := ns.Run(t, "nft", "list", "ruleset")
		for _, want := range []string{"table inet istio-proxy-nat", "table inet istio-proxy-mangle", "tproxy ip6 to :15006"} {
			if !strings.Contains(rules, want) {
				t.Errorf("after shunt-init --native-nftables in the init image, no %q in\n%s", want, rules)
			}
		}
		if out, err := runInImage(t, initImg, ns, "cleanup", "--native-nftables"); err != nil {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		if rules := ns.Run(t, "nft", "list", "ruleset"); strings.Contains(rules, "istio-proxy") {
			t.Errorf("after cleanup in the init image:\n%s", rules)
		}
	})
}

// testImageLayout checks what every image shares: the layout, the config, the single file and the
// reproducibility.
func testImageLayout(t *testing.T, img *testImage) {
	entrypoint := "/" + img.spec.file
	t.Run("Layout", func(t *testing.T) {
		idx, err := layout.ImageIndexFromPath(img.layout)
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != 1 {
			t.Fatalf("index.json: %d manifests, want 1", len(im.Manifests))
		}
		desc := im.Manifests[0]
		wantPlatform := &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
		if diff := cmp.Diff(wantPlatform, desc.Platform); diff != "" {
			t.Errorf("index.json platform (-want +got):\n%s", diff)
		}
		ref := img.spec.repo + ":" + imageTag
		for _, key := range []string{"org.opencontainers.image.ref.name", "io.containerd.image.name"} {
			if got := desc.Annotations[key]; got != ref {
				t.Errorf("index.json annotation %s = %q, want %q", key, got, ref)
			}
		}
		if !strings.Contains(img.output, desc.Digest.String()) {
			t.Errorf("the builder's report does not name the digest %s:\n%s", desc.Digest, img.output)
		}

		image, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		// Digests, sizes and diff ids of every blob against what references them.
		if err := validate.Image(image); err != nil {
			t.Fatalf("validate: %v", err)
		}
		layers, err := image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != 1 {
			t.Fatalf("%d layers, want 1", len(layers))
		}
		if mt, err := layers[0].MediaType(); err != nil || mt != types.OCILayer {
			t.Errorf("layer media type %q (%v), want %q", mt, err, types.OCILayer)
		}
		cfg, err := image.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		created := time.Unix(img.spec.epoch, 0).UTC()
		if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || !cfg.Created.Time.Equal(created) {
			t.Errorf("config: os %q architecture %q created %v, want linux %s %v", cfg.OS, cfg.Architecture, cfg.Created.Time, runtime.GOARCH, created)
		}
		// No Cmd: the pod's args (the injector's istio-iptables ...) follow the entrypoint.
		want := v1.Config{
			Entrypoint: []string{entrypoint},
			Env:        []string{"PATH=/"},
			WorkingDir: "/",
			Labels: map[string]string{
				"org.opencontainers.image.title":    img.spec.file,
				"org.opencontainers.image.source":   "https://github.com/shuntmesh/shunt",
				"org.opencontainers.image.version":  imageTag,
				"org.opencontainers.image.revision": imageRevision,
			},
		}
		if diff := cmp.Diff(want, cfg.Config); diff != "" {
			t.Errorf("config (-want +got):\n%s", diff)
		}
	})

	t.Run("Layer", func(t *testing.T) {
		want := []string{"-rwxr-xr-x 0/0 " + img.spec.file + " " + time.Unix(img.spec.epoch, 0).UTC().Format(time.RFC3339)}
		if diff := cmp.Diff(want, img.layerEntries); diff != "" {
			t.Errorf("the layer's entries (-want +got):\n%s", diff)
		}
		path := filepath.Join(img.root, img.spec.file)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if wantBin, err := os.ReadFile(img.spec.binary); err != nil || !bytes.Equal(got, wantBin) {
			t.Errorf("%s is not %s (%v)", entrypoint, img.spec.binary, err)
		}
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s asks for a dynamic loader (PT_INTERP): the image has none", entrypoint)
			}
		}
	})

	t.Run("Reproducible", func(t *testing.T) {
		again := buildTestImage(t, img.spec)
		if !bytes.Equal(img.tarball, again.tarball) {
			t.Errorf("two builds of the same binary differ: %d and %d bytes", len(img.tarball), len(again.tarball))
		}
		// The epoch is what stamps it: another gives another image.
		later := img.spec
		later.epoch++
		if bytes.Equal(img.tarball, buildTestImage(t, later).tarball) {
			t.Error("SOURCE_DATE_EPOCH changes nothing in the image")
		}
	})
}

// imageSpec is what `make image` puts into an image.
type imageSpec struct {
	binary string // the static binary
	file   string // its name in the image (-file), its entrypoint /file
	repo   string // -name
	epoch  int64  // SOURCE_DATE_EPOCH
}

// testImage is an image built by `make image`'s builder, unpacked.
type testImage struct {
	spec    imageSpec
	tarball []byte
	// output is what the builder printed.
	output string
	// layout is the tarball extracted: an OCI image layout directory.
	layout string
	// root is the single layer extracted: the image's root file system.
	root string
	// entrypoint and env are the config's: what a container starts, and its environment before the pod's.
	entrypoint []string
	env        []string
	// layerEntries lists the layer's tar entries as "mode uid/gid name mtime".
	layerEntries []string
}

// buildTestImage runs the image builder as `make image` does for s and unpacks the result under
// t.TempDir.
func buildTestImage(t *testing.T, s imageSpec) *testImage {
	t.Helper()
	dir := t.TempDir()
	tarball := filepath.Join(dir, s.file+"-image.tar")
	cmd := exec.Command(bins.Path(t, pkgImage), "-binary", s.binary, "-file", s.file, "-o", tarball,
		"-name", s.repo, "-tag", imageTag, "-revision", imageRevision)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", s.epoch))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	img := &testImage{spec: s, output: string(out), layout: filepath.Join(dir, "layout"), root: filepath.Join(dir, "root")}
	if img.tarball, err = os.ReadFile(tarball); err != nil {
		t.Fatal(err)
	}
	names, err := extractTar(bytes.NewReader(img.tarball), img.layout)
	if err != nil {
		t.Fatalf("extract %s: %v", tarball, err)
	}
	// The layout holds nothing but its index and the three blobs it references.
	if len(names) != 7 || names[0] != "oci-layout" || names[1] != "index.json" {
		t.Errorf("entries of %s: %q, want oci-layout, index.json, blobs/, blobs/sha256/ and 3 blobs", tarball, names)
	}

	idx, err := layout.ImageIndexFromPath(img.layout)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) == 0 {
		t.Fatalf("index.json: %v", err)
	}
	image, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	img.entrypoint, img.env = cfg.Config.Entrypoint, cfg.Config.Env
	layers, err := image.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("layers: %v", err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	layerTar, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(layerTar))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		img.layerEntries = append(img.layerEntries, fmt.Sprintf("%s %d/%d %s %s",
			h.FileInfo().Mode(), h.Uid, h.Gid, h.Name, h.ModTime.UTC().Format(time.RFC3339)))
	}
	if _, err := extractTar(bytes.NewReader(layerTar), img.root); err != nil {
		t.Fatalf("extract the layer: %v", err)
	}
	return img
}

// staticBinary returns prebuilt when set (made absolute), or builds pkg as `make build` does:
// CGO_ENABLED=0, -trimpath, -ldflags ldflags. (bins builds with cgo when a C compiler is present: a
// dynamic binary, which the image cannot start.)
func staticBinary(t *testing.T, pkg, prebuilt, ldflags string) string {
	t.Helper()
	if prebuilt != "" {
		abs, err := filepath.Abs(prebuilt)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	path := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", path, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return path
}

// runInImage runs the image's entrypoint with args, as a container whose pod gives only args (Istio's
// injector: args: [istio-iptables, ...]), chrooted into the image's root file system, with the
// config's environment and nothing of the host's: no /etc, /proc, /dev or /sys (a container runtime
// would mount those; mount them under img.root for a command that needs them). With ns, the process
// runs in that network namespace, else in the test's. It returns standard output; a failure's error
// carries standard error.
func runInImage(t *testing.T, img *testImage, ns *testutil.NetNS, args ...string) (string, error) {
	t.Helper()
	if len(img.entrypoint) == 0 {
		t.Fatal("the image's config has no entrypoint")
	}
	argv := slices.Concat(img.entrypoint, args)
	var cmd *exec.Cmd
	if ns == nil {
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: img.root}
	} else {
		// ip netns exec, then chroot(8): the namespace is entered before the root changes. Absolute
		// paths: the environment is the image's, whose PATH holds nothing of the host's.
		ip, err := exec.LookPath("ip")
		if err != nil {
			t.Fatal(err)
		}
		chroot, err := exec.LookPath("chroot")
		if err != nil {
			t.Fatal(err)
		}
		cmd = exec.Command(ip, slices.Concat([]string{"netns", "exec", ns.Name, chroot, img.root}, argv)...)
	}
	cmd.Env = img.env
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s in the image: %w\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// extractTar writes the regular files and directories of the tar stream r under dir, with their
// modes, and returns the entry names in order. Anything else, or a name leaving dir, is an error: the
// tarballs under test hold nothing else.
func extractTar(r io.Reader, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	var names []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return names, err
		}
		names = append(names, h.Name)
		if !filepath.IsLocal(h.Name) {
			return names, fmt.Errorf("entry %q leaves the directory", h.Name)
		}
		path := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, h.FileInfo().Mode().Perm()); err != nil {
				return names, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return names, err
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				return names, err
			}
			if err := os.WriteFile(path, data, h.FileInfo().Mode().Perm()); err != nil {
				return names, err
			}
			// WriteFile's mode passes through the umask.
			if err := os.Chmod(path, h.FileInfo().Mode().Perm()); err != nil {
				return names, err
			}
		default:
			return names, fmt.Errorf("entry %q: unexpected type %q", h.Name, h.Typeflag)
		}
	}
}

// mountProc mounts a proc file system at root/proc until t ends, as a container runtime gives every
// container one.
func mountProc(t *testing.T, root string) {
	t.Helper()
	dir := filepath.Join(root, "proc")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("proc", dir, "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		os.Remove(dir)
		t.Fatalf("mount proc at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
}
