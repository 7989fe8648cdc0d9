package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/cni"
)

// A config file is edited as bytes: our entry is spliced into the "plugins" array and cut out again,
// so every other byte (other plugins, unknown fields, key order, number spelling, formatting) stays as
// it was, and removing an entry InsertEntry added gives back the original bytes exactly.

// Errors of the conflist editor.
var (
	ErrNotObject   = errors.New("not a JSON object")
	ErrNoPlugins   = errors.New(`no "plugins" list (plugins loaded from a directory are not supported)`)
	ErrInvalidJSON = errors.New("not valid JSON")
)

// span is the byte range [start, end) of a JSON value.
type span struct{ start, end int }

// pluginList locates the "plugins" array of a conflist.
type pluginList struct {
	open, close int // offsets of '[' and ']'
	elems       []span
}

// findPlugins returns the "plugins" array of the conflist data. As encoding/json (and so libcni)
// does, the last of duplicate keys counts.
func findPlugins(data []byte) (pluginList, error) {
	if !json.Valid(data) {
		return pluginList{}, ErrInvalidJSON
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return pluginList{}, ErrNotObject
	}
	var (
		list  pluginList
		found bool
	)
	i++
	for {
		i = skipSpace(data, i)
		switch data[i] {
		case '}':
			if !found {
				return pluginList{}, ErrNoPlugins
			}
			return list, nil
		case ',':
			i++
			continue
		}
		keyEnd := skipString(data, i)
		var key string
		if err := json.Unmarshal(data[i:keyEnd], &key); err != nil {
			return pluginList{}, err
		}
		i = skipSpace(data, keyEnd) + 1 // ':'
		i = skipSpace(data, i)
		end := skipValue(data, i)
		if key == "plugins" {
			found = data[i] == '['
			if found {
				list = parseArray(data, i)
			}
		}
		i = end
	}
}

// parseArray returns the elements of the valid JSON array at data[open].
func parseArray(data []byte, open int) pluginList {
	l := pluginList{open: open}
	i := open + 1
	for {
		i = skipSpace(data, i)
		switch data[i] {
		case ']':
			l.close = i
			return l
		case ',':
			i++
			continue
		}
		end := skipValue(data, i)
		l.elems = append(l.elems, span{i, end})
		i = end
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// skipString returns the offset after the string starting at data[i] ('"').
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the offset after the valid JSON value starting at data[i].
func skipValue(data []byte, i int) int {
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(data) && !isSpace(data[i]) && data[i] != ',' && data[i] != ']' && data[i] != '}' {
		i++
	}
	return i
}

// pluginType is the "type" of a plugin entry, or "" when it has none.
func pluginType(elem []byte) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(elem, &m) != nil {
		return ""
	}
	var t string
	if json.Unmarshal(m["type"], &t) != nil {
		return ""
	}
	return t
}

// ourIndex is the index of the first entry of ours in l, or -1.
func ourIndex(data []byte, l pluginList) int {
	for i, e := range l.elems {
		if pluginType(data[e.start:e.end]) == cni.PluginType {
			return i
		}
	}
	return -1
}

// FindEntry reports whether the conflist data has an entry of ours, and whether the first one equals
// entry (as JSON values: formatting and key order do not matter).
func FindEntry(data, entry []byte) (found, same bool, err error) {
	l, err := findPlugins(data)
	if err != nil {
		return false, false, err
	}
	i := ourIndex(data, l)
	if i < 0 {
		return false, false, nil
	}
	e := l.elems[i]
	return true, jsonEqual(data[e.start:e.end], entry), nil
}

// OnlyOurs reports whether every plugin of the conflist data is ours: such a file is never the
// primary network's config.
func OnlyOurs(data []byte) bool {
	l, err := findPlugins(data)
	if err != nil || len(l.elems) == 0 {
		return false
	}
	for _, e := range l.elems {
		if pluginType(data[e.start:e.end]) != cni.PluginType {
			return false
		}
	}
	return true
}

func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// InsertEntry returns the conflist data with entry appended to its "plugins" list, in the style of
// the entry before it: on a line of its own, indented alike, multi-line if that entry is. Entries of
// ours already present are removed first; when the first of them equals entry, data is returned
// unchanged.
func InsertEntry(data, entry []byte) ([]byte, error) {
	found, same, err := FindEntry(data, entry)
	if err != nil {
		return nil, err
	}
	if same {
		return data, nil
	}
	if found {
		if data, err = RemoveEntry(data); err != nil {
			return nil, err
		}
	}
	l, err := findPlugins(data)
	if err != nil {
		return nil, err
	}
	var ins []byte
	at := l.close
	if n := len(l.elems); n == 0 {
		if ins, err = renderEntry(entry, "", ""); err != nil {
			return nil, err
		}
	} else {
		last := l.elems[n-1]
		ws := leadingSpace(data, last.start)
		indent, unit := "", ""
		if nl := strings.LastIndexByte(ws, '\n'); nl >= 0 && bytes.IndexByte(data[last.start:last.end], '\n') >= 0 {
			indent = ws[nl+1:]
			unit = indentUnit(data, last, indent)
		}
		r, err := renderEntry(entry, indent, unit)
		if err != nil {
			return nil, err
		}
		ins = append(append([]byte(","), ws...), r...)
		at = last.end
	}
	out := make([]byte, 0, len(data)+len(ins))
	out = append(append(append(out, data[:at]...), ins...), data[at:]...)
	return out, nil
}

// leadingSpace is the whitespace just before data[i].
func leadingSpace(data []byte, i int) string {
	j := i
	for j > 0 && isSpace(data[j-1]) {
		j--
	}
	return string(data[j:i])
}

// indentUnit guesses one level of indentation from the members of the element e, itself indented
// by indent.
func indentUnit(data []byte, e span, indent string) string {
	if data[e.start] == '{' {
		ws := string(data[e.start+1 : skipSpace(data, e.start+1)])
		if nl := strings.LastIndexByte(ws, '\n'); nl >= 0 {
			if inner := ws[nl+1:]; len(inner) > len(indent) && strings.HasPrefix(inner, indent) {
				return inner[len(indent):]
			}
		}
	}
	if strings.Contains(indent, "\t") {
		return "\t"
	}
	return "  "
}

// renderEntry formats entry compact when unit is empty, else indented by unit after a first line
// that starts at indent.
func renderEntry(entry []byte, indent, unit string) ([]byte, error) {
	var b bytes.Buffer
	var err error
	if unit == "" {
		err = json.Compact(&b, entry)
	} else {
		err = json.Indent(&b, entry, indent, unit)
	}
	if err != nil {
		return nil, fmt.Errorf("entry: %w", err)
	}
	return b.Bytes(), nil
}

// RemoveEntry returns the conflist data without any entry of ours, cutting each out with the
// separator before it (after it, for the first entry), so that the rest keeps its bytes. Data
// without an entry of ours is returned as is.
func RemoveEntry(data []byte) ([]byte, error) {
	for {
		l, err := findPlugins(data)
		if err != nil {
			return nil, err
		}
		i := ourIndex(data, l)
		if i < 0 {
			return data, nil
		}
		cut := l.elems[i]
		switch {
		case len(l.elems) == 1:
		case i > 0:
			cut.start = l.elems[i-1].end
		default:
			cut.end = l.elems[1].start
		}
		out := make([]byte, 0, len(data)-(cut.end-cut.start))
		data = append(append(out, data[:cut.start]...), data[cut.end:]...)
	}
}

// ConfToConflist turns the lone plugin config conf (a .conf file) into a conflist whose plugins are
// that config, kept byte for byte but for indentation, then entry. Name and cniVersion are the
// config's, as libcni's ConfListFromConf makes them.
func ConfToConflist(conf, entry []byte) ([]byte, error) {
	if !json.Valid(conf) {
		return nil, ErrInvalidJSON
	}
	conf = bytes.TrimSpace(conf)
	if conf[0] != '{' {
		return nil, ErrNotObject
	}
	var head struct {
		Name       any `json:"name"`
		CNIVersion any `json:"cniVersion"`
	}
	if err := json.Unmarshal(conf, &head); err != nil {
		return nil, err
	}
	str := func(v any) []byte {
		s, _ := v.(string)
		b, _ := json.Marshal(s)
		return b
	}
	e, err := renderEntry(entry, "    ", "  ")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\n  \"cniVersion\": %s,\n  \"name\": %s,\n  \"plugins\": [\n    ", str(head.CNIVersion), str(head.Name))
	// A raw newline only occurs between tokens, so indenting after each keeps every value.
	b.Write(bytes.ReplaceAll(conf, []byte("\n"), []byte("\n    ")))
	fmt.Fprintf(&b, ",\n    %s\n  ]\n}\n", e)
	return b.Bytes(), nil
}

// OriginalKey is the member of a conflist made of a lone plugin config (ConfToConflist) that holds
// that config as it was: its file name, mode and bytes, so that uninstalling gives it back byte for
// byte, even from an installer started after the one that made the conflist was killed.
//
// The record is kept in the conflist itself rather than in a backup file next to it: the conflist and
// its record then appear in one rename and go in one removal, so no crash can leave a conflist
// without its record, or a record of a conflist that is gone, and net.d gets no file of ours beyond
// the conflist. libcni (and so containerd and CRI-O) ignores top-level members it does not know, and
// passes a plugin its own object only, so no plugin sees the record. An agent that rewrites the file
// and drops the record has changed it: uninstalling then takes out just our entry, as for any
// config changed since we wrote it.
const OriginalKey = "cni.shunt.io/original"

// original is the value of OriginalKey.
type original struct {
	File string `json:"file"` // base name, in the conflist's directory
	Mode string `json:"mode"` // permission bits, octal
	Data []byte `json:"data"` // base64: the bytes may not be valid UTF-8, which a JSON string would alter
}

// AddOriginal returns the conflist data (as ConfToConflist makes it) with an OriginalKey member
// holding the config file conf, of mode, it was made of.
func AddOriginal(data []byte, file string, mode fs.FileMode, conf []byte) ([]byte, error) {
	v, err := json.Marshal(original{File: file, Mode: fmt.Sprintf("%#o", mode.Perm()), Data: conf})
	if err != nil {
		return nil, err
	}
	k, _ := json.Marshal(OriginalKey)
	end := bytes.LastIndexByte(data, '}')
	if end < 0 {
		return nil, ErrNotObject
	}
	last := end
	for last > 0 && isSpace(data[last-1]) {
		last--
	}
	member := []byte("\n  ")
	if data[last-1] != '{' {
		member = []byte(",\n  ")
	}
	member = append(append(append(append(member, k...), ": "...), v...), '\n')
	out := make([]byte, 0, len(data)+len(member))
	return append(append(append(out, data[:last]...), member...), data[end:]...), nil
}

// readOriginal returns the record of the config file the conflist data at path was made of, if it
// has a valid one: a .conf or .json file of the same name in the same directory.
func readOriginal(path string, data []byte) (orig *configFile, ok bool) {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil || top[OriginalKey] == nil {
		return nil, false
	}
	var o original
	if json.Unmarshal(top[OriginalKey], &o) != nil {
		return nil, false
	}
	ext := filepath.Ext(o.File)
	if o.File != filepath.Base(o.File) || (ext != ".conf" && ext != ".json") ||
		strings.TrimSuffix(o.File, ext)+".conflist" != filepath.Base(path) {
		return nil, false
	}
	mode, err := strconv.ParseUint(o.Mode, 8, 32)
	if err != nil || mode&^0o777 != 0 || len(o.Data) == 0 {
		return nil, false
	}
	return &configFile{path: filepath.Join(filepath.Dir(path), o.File), data: o.Data, mode: fs.FileMode(mode)}, true
}

// RemoveOriginal returns the conflist data without its OriginalKey members, cut out as RemoveEntry
// cuts entries. Data without one is returned as is.
func RemoveOriginal(data []byte) ([]byte, error) {
	for {
		members, err := objectMembers(data)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(members, func(m member) bool { return m.key == OriginalKey })
		if i < 0 {
			return data, nil
		}
		cut := members[i].span
		switch {
		case len(members) == 1:
		case i > 0:
			cut.start = members[i-1].end
		default:
			cut.end = members[1].start
		}
		out := make([]byte, 0, len(data)-(cut.end-cut.start))
		data = append(append(out, data[:cut.start]...), data[cut.end:]...)
	}
}

// member is a member of a JSON object: its key, and the span from its key to the end of its value.
type member struct {
	key string
	span
}

// objectMembers returns the members of the JSON object data.
func objectMembers(data []byte) ([]member, error) {
	if !json.Valid(data) {
		return nil, ErrInvalidJSON
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return nil, ErrNotObject
	}
	var members []member
	for i++; ; {
		i = skipSpace(data, i)
		switch data[i] {
		case '}':
			return members, nil
		case ',':
			i++
			continue
		}
		start := i
		keyEnd := skipString(data, i)
		var key string
		if err := json.Unmarshal(data[i:keyEnd], &key); err != nil {
			return nil, err
		}
		i = skipSpace(data, skipSpace(data, keyEnd)+1)
		i = skipValue(data, i)
		members = append(members, member{key: key, span: span{start, i}})
	}
}
