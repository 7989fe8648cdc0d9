package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testSpec() spec {
	return spec{
		Binary:  []byte("\x7fELF not really"),
		File:    "shunt",
		Ref:     "example.com/shunt:test",
		Arch:    "amd64",
		Created: time.Unix(1700000000, 0),
		Labels:  map[string]string{"org.opencontainers.image.title": "shunt"},
	}
}

func layoutBytes(t *testing.T, s spec) []byte {
	t.Helper()
	img, err := build(s)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := img.writeLayout(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarEntries lists a tar stream's entries as "mode uid/gid name".
func tarEntries(t *testing.T, b []byte) []string {
	t.Helper()
	var got []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.FileInfo().Mode().String()+" "+h.Name)
	}
}

func TestBuildReproducible(t *testing.T) {
	a, b := layoutBytes(t, testSpec()), layoutBytes(t, testSpec())
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the same spec differ")
	}
	later := testSpec()
	later.Created = later.Created.Add(time.Second)
	if bytes.Equal(a, layoutBytes(t, later)) {
		t.Error("Created changes nothing")
	}
}

func TestWriteLayoutEntries(t *testing.T) {
	img, err := build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-rw-r--r-- oci-layout",
		"-rw-r--r-- index.json",
		"drwxr-xr-x blobs/",
		"drwxr-xr-x blobs/sha256/",
		"-rw-r--r-- blobs/sha256/" + img.Digest.Hex,
		"-rw-r--r-- blobs/sha256/" + img.ConfigDigest.Hex,
		"-rw-r--r-- blobs/sha256/" + img.LayerDigest.Hex,
	}
	if diff := cmp.Diff(want, tarEntries(t, layoutBytes(t, testSpec()))); diff != "" {
		t.Errorf("layout entries (-want +got):\n%s", diff)
	}
}

func TestLayerTar(t *testing.T) {
	s := testSpec()
	b, err := layerTar([]extraFile{{Name: s.File, Data: s.Binary}}, s.Created)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "shunt" || h.Typeflag != tar.TypeReg || h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(s.Created) {
		t.Errorf("entry %s type %c mode %o owner %d/%d mtime %v, want shunt, regular, 0755, 0/0, %v",
			h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime, s.Created)
	}
	if data, err := io.ReadAll(tr); err != nil || !bytes.Equal(data, s.Binary) {
		t.Errorf("content %q (%v), want %q", data, err, s.Binary)
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("a second entry (%v): the layer must hold /shunt alone", err)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{in: "", want: 0},
		{in: "0", want: 0},
		{in: "1700000000", want: 1700000000},
		{in: "-1", err: true},
		{in: "yesterday", err: true},
	} {
		got, err := sourceDateEpoch(tc.in)
		if (err != nil) != tc.err || err == nil && got.Unix() != tc.want {
			t.Errorf("sourceDateEpoch(%q) = %v, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestBuildInitImage: -file names the one file and the entrypoint, so the init image starts
// /shunt-init with the injector's args (istio-iptables ...).
func TestBuildInitImage(t *testing.T) {
	s := testSpec()
	s.File = "shunt-init"
	img, err := build(s)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct {
			Entrypoint []string
			Cmd        []string
			Env        []string
		} `json:"config"`
	}
	if err := json.Unmarshal(img.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/shunt-init"}, cfg.Config.Entrypoint); diff != "" || cfg.Config.Cmd != nil {
		t.Errorf("entrypoint (-want +got):\n%s\ncmd %q, want none", diff, cfg.Config.Cmd)
	}
	zr, err := gzip.NewReader(bytes.NewReader(img.Layer))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"-rwxr-xr-x shunt-init"}, tarEntries(t, layer)); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
	if bytes.Equal(layoutBytes(t, s), layoutBytes(t, testSpec())) {
		t.Error("-file changes nothing in the image")
	}
	for _, bad := range []string{"", ".", "..", "bin/shunt", "/shunt"} {
		s.File = bad
		if _, err := build(s); err == nil {
			t.Errorf("build with file %q: no error", bad)
		}
	}
}
