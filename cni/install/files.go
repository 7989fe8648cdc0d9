package install

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"

	"github.com/shuntmesh/shunt/cni"
)

// tempPrefix starts the names of our temporary files: dot files without a config extension, so that
// no runtime reads them and our watcher ignores them.
const tempPrefix = ".shunt-"

// tempSuffix ends the names of our temporary files.
const tempSuffix = ".tmp"

// configExtensions are the config files runtimes read from net.d, as containerd and CRI-O do.
var configExtensions = []string{".conf", ".conflist", ".json"}

// writeFileAtomic replaces path with data: a temporary file in the same directory, synced, given
// mode, renamed over path.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix+filepath.Base(path)+"-*"+tempSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := writeSyncClose(f, bytes.NewReader(data), mode); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func writeSyncClose(f *os.File, r io.Reader, mode fs.FileMode) error {
	_, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		// Chmod, not CreateTemp's mode: the umask does not apply.
		err = f.Chmod(mode)
	}
	return errors.Join(err, f.Close())
}

// syncDir makes the renames and removals in dir durable: a config change is made of several, and the
// next is only done once the one before would survive a crash of the node. File systems that cannot
// sync a directory (EINVAL) are taken as they are.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("sync %s: %w", dir, err)
	}
	return errors.Join(err, d.Close())
}

// removeFileSynced removes path, durably.
func removeFileSynced(path string) error {
	if err := os.Remove(path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// removeStaleTemps removes the temporary files of ours a killed run left in dir, and returns their
// paths. Only one installer runs per node, so none is being written.
func removeStaleTemps(dir string) (removed []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), tempPrefix) || !strings.HasSuffix(e.Name(), tempSuffix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

// copyFileAtomic installs a copy of src at dst with mode.
func copyFileAtomic(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	f, err := os.CreateTemp(dir, tempPrefix+filepath.Base(dst)+"-*"+tempSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := writeSyncClose(f, in, mode); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// fileDigest is the size and SHA-256 of a file.
type fileDigest struct {
	size int64
	sum  [sha256.Size]byte
}

func digestFile(path string) (fileDigest, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileDigest{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fileDigest{}, err
	}
	d := fileDigest{size: n}
	h.Sum(d.sum[:0])
	return d, nil
}

// sameContent reports whether the file at path has digest d; cheap when the sizes differ.
func sameContent(path string, d fileDigest) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != d.size {
		return false, nil
	}
	got, err := digestFile(path)
	return err == nil && got == d, err
}

// isConfigFile reports whether a runtime reads name from net.d.
func isConfigFile(name string) bool {
	return !strings.HasPrefix(name, tempPrefix) && slices.Contains(configExtensions, filepath.Ext(name))
}

// configFile is a CNI config file as read from net.d.
type configFile struct {
	path string
	data []byte
	mode fs.FileMode
}

// isList reports whether the file is a conflist; .conf and .json files hold one plugin.
func (c *configFile) isList() bool { return filepath.Ext(c.path) == ".conflist" }

// errNoConfig means net.d has no config of the primary network yet.
var errNoConfig = errors.New("no CNI network config yet")

// primaryConfig returns the config file runtimes use: of the config files not wholly ours, the first
// in libcni's sorted order. An invalid first file is an error, not skipped: runtimes would fail on it
// too, and it may be in the middle of being written.
func primaryConfig(dir string) (*configFile, error) {
	files, err := libcni.ConfFiles(dir, configExtensions)
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	for _, path := range files {
		if strings.HasPrefix(filepath.Base(path), tempPrefix) {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue // removed since listed
		}
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		c := &configFile{path: path, data: data, mode: fi.Mode().Perm()}
		if c.isList() {
			if OnlyOurs(data) {
				continue
			}
			if _, err := libcni.NetworkConfFromBytes(data); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if _, err := findPlugins(data); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return c, nil
		}
		conf, err := libcni.NetworkPluginConfFromBytes(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if conf.Network.Type == cni.PluginType {
			continue
		}
		return c, nil
	}
	return nil, errNoConfig
}
