package testutil

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
)

// File is an entry of a directory as DirFiles compares them: a regular file's bytes, or a symlink's
// target, and the mode.
type File struct {
	Data string
	Mode fs.FileMode
}

// DirFiles returns every entry of dir by name, to compare a directory before and after.
func DirFiles(t testing.TB, dir string) map[string]File {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]File)
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		f := File{Mode: fi.Mode()}
		if fi.Mode()&os.ModeSymlink != 0 {
			f.Data, err = os.Readlink(p)
		} else {
			var b []byte
			b, err = os.ReadFile(p)
			f.Data = string(b)
		}
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = f
	}
	return out
}

// ParseCommand runs what cobra's Execute runs of cmd before RunE — flag parsing, argument checks,
// PreRunE, required flags and flag groups — so that a test sees whether a command line is accepted
// without acting on it.
func ParseCommand(cmd *cobra.Command, args []string) error {
	if err := cmd.ParseFlags(args); err != nil {
		return err
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return err
	}
	if cmd.PreRunE != nil {
		if err := cmd.PreRunE(cmd, cmd.Flags().Args()); err != nil {
			return err
		}
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		return err
	}
	return cmd.ValidateFlagGroups()
}
