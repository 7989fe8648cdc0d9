package iptables

import "testing"

func TestParseVersion(t *testing.T) {
	for in, want := range map[string][3]int{
		"iptables v1.8.9 (legacy)\n":   {1, 8, 9},
		"iptables v1.8.5 (legacy)":     {1, 8, 5},
		"iptables v1.6.1\n":            {1, 6, 1},
		"iptables v1.10.0 (nf_tables)": {1, 10, 0},
		"":                             {},
		"iptables v1.8":                {},
		"iptables vX.8.9 (legacy)":     {},
		"ip6tables v1.8.x":             {},
	} {
		if got := parseVersion(in); got != want {
			t.Errorf("parseVersion(%q) = %v, want %v", in, got, want)
		}
	}
}

func FuzzParseVersion(f *testing.F) {
	f.Add("iptables v1.8.9 (legacy)\n")
	f.Add("iptables v1.8")
	f.Fuzz(func(t *testing.T, s string) {
		v := parseVersion(s)
		if v[0] < 0 || v[1] < 0 || v[2] < 0 {
			t.Errorf("parseVersion(%q) = %v: a negative part is not a version", s, v)
		}
	})
}
