package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// Steps of a config change, passed to Installer.step.
const (
	stepConflistWritten = "conflist written"  // the config with our entry (a new conflist) in place
	stepOriginalRemoved = "original removed"  // the lone plugin config turned into that conflist removed
	stepOriginalWritten = "original restored" // uninstall: the lone plugin config back, our conflist not yet removed
)

// installState is what Run did to the primary network's config. Nothing in it is needed to undo that:
// uninstalling works from the files alone (see restore), so that an installer started after another
// was killed undoes what the killed one did.
type installState struct {
	path     string // file holding our entry
	written  []byte // its bytes as we wrote (or found) them
	origPath string // path, or the lone plugin config path was made of, which may come back
	present  bool   // our entry was in place when last seen
}

// ensureEntry puts our entry in the primary network's config unless it is there. wait > 0 means
// another agent keeps dropping it and the installer waits that long before putting it back.
func (in *Installer) ensureEntry() (wait time.Duration, err error) {
	now := time.Now()
	if now.Before(in.fight.until) {
		return in.fight.until.Sub(now), nil
	}
	setPath := func(ok bool, path, why string) {
		in.setStatus(func(s *status) { s.entryOK, s.entryPath, s.entryWhy = ok, path, why })
	}
	defer func() {
		if err != nil {
			setPath(false, "", err.Error())
		}
	}()
	p, err := primaryConfig(in.cfg.NetDir)
	if errors.Is(err, errNoConfig) {
		setPath(false, "", "no primary network CNI config in "+in.cfg.NetDir+" yet")
		if in.st != nil && in.st.present {
			if d := in.lost(in.st.path, now); d > 0 {
				return d, nil
			}
		}
		if in.note("primary", err) {
			in.log.Info("waiting for the primary network's CNI config", "dir", in.cfg.NetDir)
		}
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	in.note("primary", nil)
	origPath := p.path
	if o, ok := readOriginal(p.path, p.data); ok {
		origPath = o.path
		// The lone config our conflist was made of is there again: a run killed between writing the
		// conflist and removing it, or its agent wrote it again. A .conf sorts before the conflist and
		// is the primary already; a .json sorts after it.
		if c, err := readConfig(o.path); err == nil {
			p = c
		} else if !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
	}

	st := in.st
	if st != nil && p.path != st.path && p.path != st.origPath {
		// Another file is now first: take our entry out of the old one.
		in.log.Info("primary CNI config is now another file: moving our entry", "from", st.path, "to", p.path)
		if err := in.restore(st.path); err != nil {
			return 0, err
		}
		in.st, st = nil, nil
		in.fight = fightState{}
	}

	found, same := false, false
	if p.isList() {
		if found, same, err = FindEntry(p.data, in.entry); err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
	}
	if same {
		if st == nil || st.path != p.path || !bytes.Equal(st.written, p.data) {
			// Found in place (an earlier run), or the file changed around our entry.
			in.st = &installState{path: p.path, written: p.data, origPath: origPath}
			in.log.Info("our entry is in the primary CNI config", "file", p.path, "restored_on_uninstall", origPath)
		}
		in.st.present = true
		setPath(true, p.path, "")
		return 0, nil
	}
	setPath(false, p.path, "our entry is missing from "+p.path)

	if st != nil && st.present && !found {
		if d := in.lost(p.path, now); d > 0 {
			return d, nil
		}
	}

	target, out := p.path, []byte(nil)
	if p.isList() {
		if out, err = InsertEntry(p.data, in.entry); err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
	} else {
		// The conflist records the config it is made of, and is in place (one rename) before that
		// config is removed: wherever a crash stops the sequence below, the original bytes are on
		// disk, in the config file or in the conflist.
		if out, err = ConfToConflist(p.data, in.entry); err == nil {
			out, err = AddOriginal(out, filepath.Base(p.path), p.mode, p.data)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
		target = strings.TrimSuffix(p.path, filepath.Ext(p.path)) + ".conflist"
		if have, err := os.ReadFile(target); err == nil && !in.madeByUs(st, target, have) {
			return 0, fmt.Errorf("turning %s into a conflist would replace %s, which is not ours", p.path, target)
		}
	}
	if err := writeFileAtomic(target, out, p.mode); err != nil {
		return 0, err
	}
	if err := in.stepDone(stepConflistWritten); err != nil {
		return 0, err
	}
	if target != p.path {
		if err := removeFileSynced(p.path); err != nil {
			return 0, err
		}
		if err := in.stepDone(stepOriginalRemoved); err != nil {
			return 0, err
		}
		in.log.Info("turned the primary CNI config into a conflist and appended our entry", "file", target, "from", p.path)
	} else {
		in.log.Info("appended our entry to the primary CNI config", "file", target)
	}
	in.st = &installState{path: target, written: out, origPath: origPath, present: true}
	in.fight.inserted = now
	setPath(true, target, "")
	return 0, nil
}

// stepDone calls the step hook, if any.
func (in *Installer) stepDone(name string) error {
	if in.step == nil {
		return nil
	}
	return in.step(name)
}

// readConfig reads the lone plugin config at path, as primaryConfig takes it.
func readConfig(path string) (*configFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := libcni.NetworkPluginConfFromBytes(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &configFile{path: path, data: data, mode: fi.Mode().Perm()}, nil
}

// madeByUs reports whether the conflist at path, with data, is one we made of a lone plugin config:
// the one we wrote, or one with our entry or our record of the original, which an earlier run wrote.
func (in *Installer) madeByUs(st *installState, path string, data []byte) bool {
	if st != nil && bytes.Equal(data, st.written) {
		return true
	}
	if _, ok := readOriginal(path, data); ok {
		return true
	}
	found, _, err := FindEntry(data, in.entry)
	return err == nil && found
}

// restore takes our entry out of the config file at path. A conflist we made of a lone plugin
// config, unchanged since but for our entry, gives way to that config, byte for byte; any other file
// keeps every byte but our entry and our record of the original. It works from the file alone, so
// that it undoes what a killed run did too.
func (in *Installer) restore(path string) error {
	cur, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if o, ok := readOriginal(path, cur); ok && madeOf(cur, o.data, in.entry) {
		switch have, err := os.ReadFile(o.path); {
		case errors.Is(err, fs.ErrNotExist):
			if err := writeFileAtomic(o.path, o.data, o.mode); err != nil {
				return err
			}
		case err != nil:
			return err
		case !bytes.Equal(have, o.data):
			// Its agent wrote it again since: the newer one stays.
			in.log.Info("the CNI config our conflist was made of was written again: keeping it", "file", o.path)
		}
		if err := in.stepDone(stepOriginalWritten); err != nil {
			return err
		}
		if err := removeFileSynced(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		in.log.Info("restored the CNI config", "file", o.path, "removed", path)
		return nil
	}
	out, err := RemoveEntry(cur)
	if err == nil {
		out, err = RemoveOriginal(out)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(out, cur) {
		return nil
	}
	mode := fs.FileMode(defaultNetConfigMode)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := writeFileAtomic(path, out, mode); err != nil {
		return err
	}
	in.log.Info("removed our entry from the CNI config, which changed since we wrote it", "file", path)
	return nil
}

// madeOf reports whether the conflist data is what ConfToConflist makes of conf, but for our entry
// (entry, or another of ours) and our record of conf: nobody changed it since.
func madeOf(data, conf, entry []byte) bool {
	want, err := ConfToConflist(conf, entry)
	if err == nil {
		want, err = RemoveEntry(want)
	}
	if err != nil {
		return false
	}
	got, err := RemoveEntry(data)
	if err == nil {
		got, err = RemoveOriginal(got)
	}
	return err == nil && bytes.Equal(got, want)
}
