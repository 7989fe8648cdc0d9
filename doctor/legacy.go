package doctor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
)

// legacyLayout is where struct ipt_entry (ip6t_entry) keeps the offsets of its target and of the next
// entry, and its size.
type legacyLayout struct {
	entrySize, targetOffset, nextOffset int
}

var (
	legacyV4 = legacyLayout{entrySize: 112, targetOffset: 88, nextOffset: 90}
	legacyV6 = legacyLayout{entrySize: 168, targetOffset: 140, nextOffset: 142}
)

// hookChains are the built-in chains in hook order (NF_INET_PRE_ROUTING ...).
var hookChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

var errBlob = errors.New("malformed table blob")

// countLegacy returns the chains of a legacy table blob (IPT_SO_GET_ENTRIES' entries), built-in ones
// (from validHooks) first, and its rule count. The blob lays out each built-in chain as its rules then
// its policy, each user chain as an ERROR entry naming it, its rules, then a RETURN, and ends with an
// ERROR entry: the rules are what remains.
func countLegacy(lay legacyLayout, blob []byte, validHooks uint32) (chains []string, rules int, err error) {
	for h, name := range hookChains {
		if validHooks&(1<<h) != 0 {
			chains = append(chains, name)
		}
	}
	entries, user := 0, 0
	for off := 0; off < len(blob); entries++ {
		if off+lay.entrySize > len(blob) {
			return nil, 0, errBlob
		}
		target := int(binary.NativeEndian.Uint16(blob[off+lay.targetOffset:]))
		next := int(binary.NativeEndian.Uint16(blob[off+lay.nextOffset:]))
		// struct xt_entry_target: u16 target_size, char name[29], u8 revision, then the data.
		if next < lay.entrySize || off+next > len(blob) || target < lay.entrySize || target+32 > next {
			return nil, 0, errBlob
		}
		t := blob[off+target : off+next]
		if cString(t[2:31]) == "ERROR" {
			if name := cString(t[32:min(len(t), 64)]); name != "ERROR" {
				chains = append(chains, name)
				user++
			}
		}
		off += next
	}
	rules = entries - bits.OnesCount32(validHooks&0x1f) - 2*user - 1
	if rules < 0 {
		return nil, 0, errBlob
	}
	return chains, rules, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// legacyTable is a legacy table's contents as its blob tells.
type legacyTable struct {
	chains []string
	rules  int
}
