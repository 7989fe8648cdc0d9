package ebpf

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// hybridMounts is /proc/mounts of a hybrid cgroup setup, as on the test machines.
const hybridMounts = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
`

func TestCgroup2Mount(t *testing.T) {
	for _, c := range []struct {
		name, mounts, want string
	}{
		{"hybrid", hybridMounts, "/sys/fs/cgroup/unified"},
		{"unified", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n", "/sys/fs/cgroup"},
		{"escaped", `none /run/my\040cgroup cgroup2 rw 0 0` + "\n", "/run/my cgroup"},
		{"first of two", "none /a cgroup2 rw 0 0\nnone /b cgroup2 rw 0 0\n", "/a"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := cgroup2Mount([]byte(c.mounts))
			if err != nil || got != c.want {
				t.Errorf("%q, %v; want %q", got, err, c.want)
			}
		})
	}
	if _, err := cgroup2Mount([]byte("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\nshort line\n")); !errors.Is(err, ErrNotSupported) {
		t.Errorf("without cgroup2: %v, want ErrNotSupported", err)
	}
	if !hasMount([]byte(hybridMounts), "/sys/fs/bpf", "bpf") || hasMount([]byte(hybridMounts), "/sys/fs/bpf", "tmpfs") {
		t.Error("hasMount")
	}
}

func TestParseMounts(t *testing.T) {
	got := parseMounts([]byte("a\\134b /x\\011y t o\\040p 0 0\nincomplete line\n\n" + `s /p\12 t o` + "\n"))
	want := []mount{
		{Source: `a\b`, Point: "/x\ty", Type: "t", Options: "o p"},
		{Source: "s", Point: `/p\12`, Type: "t", Options: "o"}, // not three octal digits: kept
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
}

func TestHasFilesystem(t *testing.T) {
	fss := "nodev\tsysfs\nnodev\tbpf\n\text4\n"
	if !hasFilesystem([]byte(fss), "bpf") || !hasFilesystem([]byte(fss), "ext4") || hasFilesystem([]byte(fss), "btrfs") {
		t.Error("hasFilesystem")
	}
}

// FuzzParseMounts checks that parsing never fails on any input and that a mount point mangled as
// the kernel does comes back unchanged.
func FuzzParseMounts(f *testing.F) {
	f.Add(hybridMounts, "/sys/fs/cgroup/unified")
	f.Add(`x \\ \0 \777`, "/with space\tand\\backslash\n")
	f.Fuzz(func(t *testing.T, data, point string) {
		_ = parseMounts([]byte(data))
		if point == "" || strings.ContainsRune(point, 0) {
			return
		}
		line := "none " + escapeMount(point) + " cgroup2 rw 0 0\n"
		got, err := cgroup2Mount([]byte(line))
		if err != nil || got != point {
			t.Errorf("mount point %q from %q: %q, %v", point, line, got, err)
		}
	})
}
