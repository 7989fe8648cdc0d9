package nfnl

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
)

// FuzzAttrs: Attrs reads any bytes as mdlayher/netlink's AttributeDecoder does — the same
// attributes, types, data and numbers, the same errors or none — nested attributes too.
func FuzzAttrs(f *testing.F) {
	f.Add(ruleBytes(f))
	f.Add([]byte{5, 0, 1, 0, 'x', 0, 0, 0, 0, 0, 2, 0})
	f.Add([]byte{8, 0, 1, 0x80, 0, 0, 0, 7, 3, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAttrs(t, b, 0)
	})
}

func sameAttrs(t *testing.T, b []byte, depth int) {
	want, werr := netlink.NewAttributeDecoder(b)
	got, gerr := NewAttrs(b)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("NewAttrs error %v, want %v", gerr, werr)
	}
	if werr != nil {
		return
	}
	want.ByteOrder = binary.BigEndian
	for i := 0; ; i++ {
		wn, gn := want.Next(), got.Next()
		if wn != gn {
			t.Fatalf("attribute %d: Next %v, want %v", i, gn, wn)
		}
		if !wn {
			break
		}
		if want.Type() != got.Type() || !bytes.Equal(want.Bytes(), got.Data()) {
			t.Fatalf("attribute %d: %d %x, want %d %x", i, got.Type(), got.Data(), want.Type(), want.Bytes())
		}
		if depth < 2 && i%2 == 0 {
			sameAttrs(t, got.Data(), depth+1)
		}
		switch i % 4 {
		case 0:
			if w, g := want.Uint32(), got.Uint32(); w != g {
				t.Fatalf("attribute %d: Uint32 %d, want %d", i, g, w)
			}
		case 1:
			if w, g := want.Uint64(), got.Uint64(); w != g {
				t.Fatalf("attribute %d: Uint64 %d, want %d", i, g, w)
			}
		case 2:
			if w, g := want.String(), got.String(); w != g {
				t.Fatalf("attribute %d: String %q, want %q", i, g, w)
			}
		}
	}
	if (want.Err() != nil) != (got.Err() != nil) {
		t.Fatalf("Err %v, want %v", got.Err(), want.Err())
	}
}
