package podstate

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

var equateAddrs = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func record(id, pod string) Record {
	return Record{Version: Version, ContainerID: id, NetNS: "/var/run/netns/cni-" + id, Namespace: "default", Name: pod,
		Backend: "iptables-nft", Config: redirect.DefaultConfig(), Updated: time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)}
}

func TestStore(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "pods")}
	if recs, err := s.List(); err != nil || len(recs) != 0 {
		t.Fatalf("List of a missing directory = %v, %v; want none", recs, err)
	}
	b, a := record("c2", "b"), record("c1", "a")
	for _, r := range []Record{b, a} {
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Record{a, b}, got, equateAddrs); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	b.Backend = "nftables"
	if err := s.Put(b); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get("c2"); err != nil || r.Backend != "nftables" {
		t.Errorf("Get after replacing = %+v, %v; want backend nftables", r, err)
	}
	for range 2 { // a second Delete is no error
		if err := s.Delete("c1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Get("c1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a deleted record: %v, want ErrNotExist", err)
	}
	entries, _ := os.ReadDir(s.Dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want 1 (no temporary file left)", len(entries))
	}
}

// TestStoreBadRecords: a bad file is reported, by name, and hides none of the good records; an ID that
// is not one file name is refused.
func TestStoreBadRecords(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	if err := s.Put(record("good", "a")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(s.Dir, "broken.json"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(s.Dir, ".tmp-123"), []byte("{"), 0o600) // a temporary file: skipped
	moved := record("other", "b")
	data, _ := os.ReadFile(filepath.Join(s.Dir, "good.json"))
	os.WriteFile(filepath.Join(s.Dir, "renamed.json"), data, 0o600) // holds the ID "good"
	s.Put(moved)
	recs, err := s.List()
	if len(recs) != 2 || recs[0].ContainerID != "good" || recs[1].ContainerID != "other" {
		t.Errorf("List = %+v, want the records good and other", recs)
	}
	if err == nil || !strings.Contains(err.Error(), "broken.json") || !strings.Contains(err.Error(), `renamed.json: holds container ID "good"`) {
		t.Errorf("List error = %v, want broken.json and renamed.json named", err)
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b"} {
		if err := s.Put(record(id, "x")); err == nil {
			t.Errorf("Put with container ID %q: no error", id)
		}
		if err := s.Delete(id); err == nil {
			t.Errorf("Delete of container ID %q: no error", id)
		}
	}
}

// TestRecordConfigRoundTrip: the settings of random configurations come back from a record exactly, so
// that the agent plans what ADD planned.
func TestRecordConfigRoundTrip(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	r := rand.New(rand.NewPCG(13, 14))
	for i := range 300 {
		rec := record("c", "p")
		rec.Config = randconfig.Config(r, redirect.DefaultConfig())
		if rec.Config.Validate() != nil {
			continue
		}
		if err := s.Put(rec); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get("c")
		if err != nil {
			t.Fatalf("config %d: %v", i, err)
		}
		want, _ := redirect.Build(rec.Config)
		plan, err := redirect.Build(got.Config)
		if err != nil {
			t.Fatalf("config %d: %v", i, err)
		}
		if diff := cmp.Diff(want, plan, equateAddrs); diff != "" {
			t.Fatalf("config %d: the plan of the record differs (-want +got):\n%s", i, diff)
		}
	}
}

func TestParseNamesFields(t *testing.T) {
	_, err := Parse([]byte(`{"version":1,"container_id":"c","netns":"relative","namespace":"n","backend":"ip6tables","config":{}}`))
	for _, want := range []string{`netns: invalid value "relative"`, `namespace/name: invalid value "n/"`, `backend: invalid value "ip6tables"`, "config:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse error %v, want it to name %s", err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	good, _ := os.ReadFile("testdata/record.json")
	f.Add(good)
	f.Add([]byte(`{"version":1,"container_id":"c","netns":"/x","namespace":"n","name":"p","backend":"nftables","config":{"ProxyPort":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		if _, err := redirect.Build(r.Config); err != nil {
			t.Fatalf("a record Parse accepts does not plan: %v", err)
		}
	})
}

// TestMarkRecording: the first mark holds, a second keeps the first time, List skips the marker.
func TestMarkRecording(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "pods")}
	if _, ok, err := s.RecordingSince(); ok || err != nil {
		t.Fatalf("no marker yet: ok %v, err %v", ok, err)
	}
	first := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	got, err := s.MarkRecording(first)
	if err != nil || !got.Equal(first) {
		t.Fatalf("MarkRecording = %v, %v; want %v", got, err, first)
	}
	if got, err := s.MarkRecording(first.Add(time.Hour)); err != nil || !got.Equal(first) {
		t.Errorf("second MarkRecording = %v, %v; want the first time %v", got, err, first)
	}
	if since, ok, err := s.RecordingSince(); !ok || err != nil || !since.Equal(first) {
		t.Errorf("RecordingSince = %v, %v, %v", since, ok, err)
	}
	if recs, err := s.List(); len(recs) != 0 || err != nil {
		t.Errorf("List = %v, %v; want the marker skipped", recs, err)
	}
}

// TestLock: a second Lock waits for the first's unlock, or gives up with its context.
func TestLock(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "pods")}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock while held: %v, want the context's deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		u, err := s.Lock(context.Background())
		if err == nil {
			u()
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Lock did not get the lock once released")
	}
	if recs, err := s.List(); len(recs) != 0 || err != nil {
		t.Errorf("List = %v, %v; want the lock file skipped", recs, err)
	}
}
