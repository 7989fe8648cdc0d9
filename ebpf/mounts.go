package ebpf

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// mount is one line of /proc/mounts.
type mount struct {
	Source, Point, Type, Options string
}

// parseMounts parses the text of /proc/mounts (or /proc/self/mounts): fields separated by single
// spaces, in which the kernel escapes space, tab, newline and backslash in octal (\040, \011,
// \012, \134) and leaves every other byte as it is. Lines without the four fields are skipped.
func parseMounts(data []byte) []mount {
	var out []mount
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), " ")
		if len(f) < 4 {
			continue
		}
		out = append(out, mount{
			Source: unescapeMount(f[0]), Point: unescapeMount(f[1]),
			Type: unescapeMount(f[2]), Options: unescapeMount(f[3]),
		})
	}
	return out
}

// unescapeMount undoes the kernel's mangling of a mounts field: a backslash followed by three
// octal digits is that byte; anything else is kept as it is.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// escapeMount mangles s as the kernel does in /proc/mounts (the inverse of unescapeMount).
func escapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cgroup2Mount returns the mount point of the first cgroup2 file system in mounts (the text of
// /proc/mounts): /sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Mount(mounts []byte) (string, error) {
	for _, m := range parseMounts(mounts) {
		if m.Type == "cgroup2" {
			return m.Point, nil
		}
	}
	return "", fmt.Errorf("no cgroup2 file system mounted: %w", ErrNotSupported)
}

// hasMount reports whether a file system of type fsType is mounted at point.
func hasMount(mounts []byte, point, fsType string) bool {
	for _, m := range parseMounts(mounts) {
		if m.Point == point && m.Type == fsType {
			return true
		}
	}
	return false
}

// hasFilesystem reports whether /proc/filesystems (its text) lists the file system name.
func hasFilesystem(data []byte, name string) bool {
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}
