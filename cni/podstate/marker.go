package podstate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// markerName is the file, in the records' directory, that says since when the plugin installed on the
// node records every pod it captures. List skips it (a dot file).
const markerName = ".recording-since"

// RecordingSince returns the time of the directory's marker (see MarkRecording); ok is false when
// there is none: no plugin that records pods was installed since the node booted (the directory is on
// tmpfs), or one of a release that wrote no records was.
func (s Store) RecordingSince() (since time.Time, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(s.Dir, markerName))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	since, err = time.Parse(time.RFC3339Nano, strings.TrimSpace(string(data)))
	if err != nil {
		return time.Time{}, false, fmt.Errorf("marker %s: %w", filepath.Join(s.Dir, markerName), err)
	}
	return since, true, nil
}

// MarkRecording writes the marker with the time now, unless one is there already, and returns the
// marker's time: from then on every pod the plugin captures on the node has a record, so that a meshed
// pod started later without one started without the plugin. The node agent calls it once its plugin,
// which records pods, is installed.
func (s Store) MarkRecording(now time.Time) (time.Time, error) {
	if since, ok, err := s.RecordingSince(); err != nil || ok {
		return since, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return time.Time{}, err
	}
	path := filepath.Join(s.Dir, markerName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		since, _, err := s.RecordingSince()
		return since, err
	}
	if err != nil {
		return time.Time{}, err
	}
	now = now.UTC()
	_, werr := f.WriteString(now.Format(time.RFC3339Nano) + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(path)
		return time.Time{}, fmt.Errorf("write marker %s: %w", path, err)
	}
	return now, nil
}
