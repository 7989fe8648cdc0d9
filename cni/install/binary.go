package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/shim"
)

// installBin is one binary the installer keeps in the CNI bin directory.
type installBin struct {
	src    string
	digest fileDigest
	dst    string
}

// binariesToInstall says what goes into cfg.BinDir: with a shim, the standalone plugin and the shim
// (as cni.PluginType); without, cfg.Binary as cni.PluginType. The plugin runtimes execute comes last,
// so that it never runs without the standalone plugin it may hand a command to.
func binariesToInstall(cfg *Config) ([]installBin, error) {
	if cfg.Shim == "" {
		beside := filepath.Join(filepath.Dir(cfg.Binary), shim.DefaultName)
		if fi, err := os.Stat(beside); err == nil && fi.Mode().IsRegular() && beside != cfg.Binary {
			cfg.Shim = beside
		}
	}
	digest := func(what, path, dst string) (installBin, error) {
		d, err := digestFile(path)
		if err != nil {
			return installBin{}, fmt.Errorf("%s to install: %w", what, err)
		}
		return installBin{src: path, digest: d, dst: filepath.Join(cfg.BinDir, dst)}, nil
	}
	if cfg.Shim == "" {
		b, err := digest("binary", cfg.Binary, cni.PluginType)
		return []installBin{b}, err
	}
	standalone, err := digest("binary", cfg.Binary, shim.StandaloneName)
	if err != nil {
		return nil, err
	}
	plugin, err := digest("shim", cfg.Shim, cni.PluginType)
	if err != nil {
		return nil, err
	}
	return []installBin{standalone, plugin}, nil
}

// ensureBinary installs the binaries unless they are in place, and verifies the plugin runs. ok means
// both.
func (in *Installer) ensureBinary(ctx context.Context) (ok bool, err error) {
	for _, b := range in.bins {
		same, err := sameContent(b.dst, b.digest)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		if same {
			continue
		}
		if in.binVerified {
			in.log.Warn("plugin binary was removed or changed: installing it again", "file", b.dst)
		}
		in.binVerified = false
		if err := copyFileAtomic(b.src, b.dst, binaryMode); err != nil {
			return false, err
		}
		in.log.Info("installed plugin binary", "file", b.dst, "from", b.src)
	}
	if !in.binVerified {
		ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
		defer cancel()
		// With a shim, VERSION goes through it to the standalone plugin: both are verified.
		versions, err := verifyPlugin(ctx, in.binPath, in.entry)
		if err != nil {
			return false, err
		}
		in.binVerified = true
		in.log.Info("verified plugin binary", "file", in.binPath, "cni_versions", versions, "shim", len(in.bins) > 1)
	}
	return true, nil
}
