package install

import (
	"context"
	"errors"
	"io/fs"
)

// ensureBinary installs the binary unless it is in place, and verifies it runs. ok means both.
func (in *Installer) ensureBinary(ctx context.Context) (ok bool, err error) {
	same, err := sameContent(in.binPath, in.src)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if !same {
		if in.binVerified {
			in.log.Warn("plugin binary was removed or changed: installing it again", "file", in.binPath)
		}
		in.binVerified = false
		if err := copyFileAtomic(in.cfg.Binary, in.binPath, binaryMode); err != nil {
			return false, err
		}
		in.log.Info("installed plugin binary", "file", in.binPath, "from", in.cfg.Binary)
	}
	if !in.binVerified {
		ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
		defer cancel()
		versions, err := verifyPlugin(ctx, in.binPath, in.entry)
		if err != nil {
			return false, err
		}
		in.binVerified = true
		in.log.Info("verified plugin binary", "file", in.binPath, "cni_versions", versions)
	}
	return true, nil
}
