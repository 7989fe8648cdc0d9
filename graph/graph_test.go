package graph

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil/golden"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

func build(t testing.TB, cfg redirect.Config) *redirect.Plan {
	t.Helper()
	p, err := redirect.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

func tproxyDNS() redirect.Config {
	cfg := redirect.DefaultConfig()
	cfg.Mode = redirect.ModeTProxy
	cfg.RedirectDNS = true
	cfg.DNSServers = []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	return cfg
}

func ref(f redirect.Family, table, chain string, i int) redirect.RuleRef {
	return redirect.RuleRef{Family: f, Table: table, Chain: chain, Index: i}
}

// cases are the plans the golden files draw.
func cases(t testing.TB) []struct {
	name string
	plan *redirect.Plan
	opts Options
} {
	dualStack := redirect.DefaultConfig()
	dualStack.IPv6 = true
	native := redirect.DefaultConfig()
	native.NativeNFTables, native.IPv6, native.DropInvalid = true, true, true
	// The app's connection to a remote address: OUTPUT, ISTIO_OUTPUT's capture rule, ISTIO_REDIRECT.
	path := []redirect.RuleRef{ref(redirect.IPv4, "nat", "OUTPUT", 0), ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 8),
		ref(redirect.IPv4, "nat", "ISTIO_REDIRECT", 0)}
	counters := map[redirect.RuleRef]redirect.Counters{
		ref(redirect.IPv4, "nat", "OUTPUT", 0):         {Packets: 1520, Bytes: 91200},
		ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 3):   {Packets: 1498, Bytes: 89880},
		ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 8):   {Packets: 22, Bytes: 1320},
		ref(redirect.IPv4, "nat", "ISTIO_REDIRECT", 0): {Packets: 22, Bytes: 1320},
		ref(redirect.IPv4, "nat", "PREROUTING", 0):     {Packets: 3, Bytes: 180},
		ref(redirect.IPv4, "nat", "ISTIO_INBOUND", 3):  {Packets: 3, Bytes: 180},
	}
	return []struct {
		name string
		plan *redirect.Plan
		opts Options
	}{
		{"default", build(t, redirect.DefaultConfig()), Options{Title: "default capture"}},
		{"dual-stack", build(t, dualStack), Options{}},
		{"tproxy-dns", build(t, tproxyDNS()), Options{Title: "TPROXY mode with DNS capture"}},
		{"native-nftables", build(t, native), Options{Title: "native nftables, IPv4 + IPv6, invalid packets dropped"}},
		{"highlight-counters", build(t, redirect.DefaultConfig()), Options{Title: "app → remote service", Highlight: path, Counters: counters}},
	}
}

// TestGolden draws each case in every format and compares with testdata/<case>.<format>.
func TestGolden(t *testing.T) {
	for _, tc := range cases(t) {
		for _, f := range Formats {
			t.Run(tc.name+"/"+string(f), func(t *testing.T) {
				var b bytes.Buffer
				if err := Render(&b, f, tc.plan, tc.opts); err != nil {
					t.Fatal(err)
				}
				checkFormat(t, f, b.Bytes())
				ext := map[Format]string{FormatSVG: "svg", FormatDOT: "dot", FormatMermaid: "mmd"}[f]
				golden.Check(t, filepath.Join("testdata", tc.name+"."+ext), b.String())
			})
		}
	}
}

// TestDeterministic: the same plan and options give the same bytes, whatever the map order.
func TestDeterministic(t *testing.T) {
	for _, tc := range cases(t) {
		g1, err := New(tc.plan, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			g2, _ := New(tc.plan, tc.opts)
			if !bytes.Equal(g1.SVG(), g2.SVG()) || !bytes.Equal(g1.DOT(), g2.DOT()) || !bytes.Equal(g1.Mermaid(), g2.Mermaid()) {
				t.Fatalf("%s: two drawings differ", tc.name)
			}
		}
	}
}

// TestDrawsEveryRule: every rule of the plan is a row of its chain, every jump and verdict an edge, in
// every format.
func TestDrawsEveryRule(t *testing.T) {
	plan := build(t, tproxyDNS())
	g, err := New(plan, Options{})
	if err != nil {
		t.Fatal(err)
	}
	svg, dot, mmd := string(g.SVG()), string(g.DOT()), string(g.Mermaid())
	for _, fp := range plan.Families {
		for _, tb := range fp.Tables {
			for _, c := range tb.Chains {
				for i := range c.Rules {
					r := &c.Rules[i]
					text := RuleText(r)
					if !strings.Contains(svg, htmlEscape(svgRuleText(text))) || !strings.Contains(dot, htmlEscape(text)) || !strings.Contains(mmd, mermaidEscape(text)) {
						t.Errorf("%s/%s #%d %q missing from a format", tb.Name, c.Name, i, text)
					}
					if r.Target.Kind == redirect.TargetJump {
						from := fmt.Sprintf("%q:r%d:e -> %q:h:w", "ip4/"+tb.Name+"/"+c.Name, i, "ip4/"+tb.Name+"/"+r.Target.Chain)
						if !strings.Contains(dot, from) {
							t.Errorf("DOT lacks the edge %s", from)
						}
					}
				}
			}
		}
	}
	for _, want := range []string{"REDIRECT :15001", "REDIRECT :15006", "REDIRECT :15053", "TPROXY :15006 mark 1337", "DNS proxy", "outbound listener"} {
		if !strings.Contains(svg, want) || !strings.Contains(dot, want) || !strings.Contains(mmd, want) {
			t.Errorf("a format lacks the verdict %q", want)
		}
	}
}

// TestHighlight: the traced rules and the edges between them are emphasised, and only those.
func TestHighlight(t *testing.T) {
	plan := build(t, redirect.DefaultConfig())
	path := []redirect.RuleRef{ref(redirect.IPv4, "nat", "OUTPUT", 0), ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 8),
		ref(redirect.IPv4, "nat", "ISTIO_REDIRECT", 0)}
	g, err := New(plan, Options{Highlight: path})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range g.sections {
		for _, e := range s.edges {
			if e.highlight {
				got = append(got, s.nodes[e.from].id+" -> "+s.nodes[e.to].id)
			}
		}
	}
	want := []string{"ip4/hook/OUTPUT -> ip4/nat/OUTPUT", "ip4/nat/OUTPUT -> ip4/nat/ISTIO_OUTPUT",
		"ip4/nat/ISTIO_OUTPUT -> ip4/nat/ISTIO_REDIRECT", "ip4/nat/ISTIO_REDIRECT -> ip4/verdict/REDIRECT :15001"}
	slices.Sort(want)
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("emphasised edges (-want +got):\n%s", diff)
	}
	if n := strings.Count(string(g.DOT()), "penwidth=3.5"); n != len(want) {
		t.Errorf("DOT has %d emphasised edges, want %d", n, len(want))
	}
}

// TestUnknownRefs: highlighted rules and counters must name rules of the plan.
func TestUnknownRefs(t *testing.T) {
	plan := build(t, redirect.DefaultConfig())
	_, err := New(plan, Options{
		Highlight: []redirect.RuleRef{ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 99), ref(redirect.IPv6, "nat", "OUTPUT", 0)},
		Counters:  map[redirect.RuleRef]redirect.Counters{ref(redirect.IPv4, "raw", "OUTPUT", 0): {}},
	})
	for _, want := range []string{"highlight IPv4/nat/ISTIO_OUTPUT#99: no such rule", "highlight IPv6/nat/OUTPUT#0", "counters of IPv4/raw/OUTPUT#0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one naming %q", err, want)
		}
	}
	if err := Render(io.Discard, "png", plan, Options{}); !errors.Is(err, ErrFormat) {
		t.Errorf("Render png: %v, want ErrFormat", err)
	}
}

func TestRuleText(t *testing.T) {
	for _, tc := range []struct {
		r    redirect.Rule
		want string
	}{
		{redirect.Rule{Proto: "tcp", DPort: redirect.PortMatch{Ports: []uint16{15008}}, Target: redirect.Target{Kind: redirect.TargetReturn}},
			"tcp dport 15008 → RETURN"},
		{redirect.Rule{Out: redirect.IfaceMatch{Name: "lo"}, Src: redirect.AddrMatch{Prefix: netip.MustParsePrefix("127.0.0.6/32")},
			Target: redirect.Target{Kind: redirect.TargetReturn}}, "out lo src 127.0.0.6 → RETURN"},
		{redirect.Rule{Dst: redirect.AddrMatch{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Not: true}, Proto: "udp",
			DPort: redirect.PortMatch{Ports: []uint16{53, 5353}, Not: true}, Owners: []redirect.OwnerMatch{{GID: true, ID: 1337, Not: true}},
			Target: redirect.Target{Kind: redirect.TargetJump, Chain: "ISTIO_REDIRECT"}},
			"dst != 10.0.0.0/8 udp dport != {53,5353} gid != 1337 → ISTIO_REDIRECT"},
		{redirect.Rule{Target: redirect.Target{Kind: redirect.TargetJump, Chain: "ISTIO_OUTPUT"}}, "all → ISTIO_OUTPUT"},
		{redirect.Rule{CTState: []string{"RELATED", "ESTABLISHED"}, Mark: redirect.MarkMatch{Set: true, Value: 1337},
			Target: redirect.Target{Kind: redirect.TargetTProxy, Port: 15006, Mark: 1337}}, "ct RELATED,ESTABLISHED mark 1337 → TPROXY :15006 mark 1337"},
		{redirect.Rule{In: redirect.IfaceMatch{Name: "eth0", Not: true}, SPort: redirect.PortMatch{Ports: []uint16{15053}},
			Target: redirect.Target{Kind: redirect.TargetCTZone, Zone: 2}}, "in != eth0 sport 15053 → CT zone 2"},
	} {
		if got := RuleText(&tc.r); got != tc.want {
			t.Errorf("RuleText = %q, want %q", got, tc.want)
		}
	}
	if got := svgRuleText(strings.Repeat("x", 100) + " → ISTIO_IN_REDIRECT"); !strings.HasSuffix(got, "… → ISTIO_IN_REDIRECT") || len([]rune(got)) != maxRuleLen {
		t.Errorf("cut text %q (%d), want %d characters ending in the target", got, len([]rune(got)), maxRuleLen)
	}
}

func TestCountersText(t *testing.T) {
	for c, want := range map[redirect.Counters]string{
		{}:                              "0 pkt, 0 B",
		{Packets: 999, Bytes: 1023}:     "999 pkt, 1023 B",
		{Packets: 1520, Bytes: 91200}:   "1.5k pkt, 89 KiB",
		{Packets: 12e6, Bytes: 3 << 30}: "12M pkt, 3.0 GiB",
	} {
		if got := countersText(c); got != want {
			t.Errorf("countersText(%v) = %q, want %q", c, got, want)
		}
	}
}

func TestParseRef(t *testing.T) {
	for _, s := range []string{"IPv4/nat/ISTIO_OUTPUT#3", "IPv6/mangle/PREROUTING#0", "inet/raw/ISTIO_OUTPUT_DNS#12"} {
		r, err := ParseRef(s)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", s, err)
		} else if r.String() != s {
			t.Errorf("ParseRef(%q) = %s", s, r)
		}
	}
	if r, err := ParseRef(" ipv4/nat/OUTPUT#0 "); err != nil || r != ref(redirect.IPv4, "nat", "OUTPUT", 0) {
		t.Errorf("lower case family: %v, %v", r, err)
	}
	for s, want := range map[string]string{
		"":                           "want FAMILY/TABLE/CHAIN#INDEX",
		"IPv4/nat/ISTIO_OUTPUT":      "no #INDEX",
		"IPv5/nat/OUTPUT#1":          `family "IPv5"`,
		"IPv4/nat/OUTPUT#-1":         `index "-1"`,
		"IPv4/nat/OUTPUT#+1":         `index "+1"`,
		"IPv4/nat/OUTPUT#x":          `index "x"`,
		"IPv4/nat/OUTPUT#":           `index ""`,
		"IPv4//OUTPUT#1":             `table ""`,
		"IPv4/nat/OUT PUT#1":         `chain "OUT PUT"`,
		"IPv4/nat/a/b#1":             "want FAMILY/TABLE/CHAIN#INDEX",
		"IPv4/nat/OUTPUT#9999999999": `index "9999999999"`,
	} {
		_, err := ParseRef(s)
		if !errors.Is(err, ErrRef) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
			t.Errorf("ParseRef(%q) = %v, want an error naming the value and %s", s, err, want)
		}
	}
	refs, err := ParseRefs("IPv4/nat/OUTPUT#0, IPv4/nat/ISTIO_OUTPUT#8,")
	if err != nil || len(refs) != 2 || refs[1] != ref(redirect.IPv4, "nat", "ISTIO_OUTPUT", 8) {
		t.Errorf("ParseRefs: %v, %v", refs, err)
	}
	if _, err := ParseRefs("IPv4/nat/OUTPUT#0,bad,worse"); err == nil || !strings.Contains(err.Error(), `"bad"`) || !strings.Contains(err.Error(), `"worse"`) {
		t.Errorf("ParseRefs with two bad items: %v, want both named", err)
	}
}

// FuzzParseRef: whatever the input, ParseRef does not panic, and what it accepts prints back to
// something it parses to the same reference.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"IPv4/nat/ISTIO_OUTPUT#3", "inet/raw/OUTPUT#0", "IPv6/mangle/x#-1", "/#", "a/b/c#d#e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		again, err := ParseRef(r.String())
		if err != nil || again != r {
			t.Fatalf("%q parsed to %v, which parses to %v, %v", s, r, again, err)
		}
	})
}

// FuzzGraph draws the plans of random configurations with random highlights and counters: no panic,
// the SVG is well-formed XML, the DOT's braces, brackets and quotes balance, the Mermaid text has a
// line per node.
func FuzzGraph(f *testing.F) {
	for i := range 8 {
		f.Add(uint64(i), uint64(i*7+1))
	}
	f.Fuzz(func(t *testing.T, seed1, seed2 uint64) {
		r := rand.New(rand.NewPCG(seed1, seed2))
		cfg := randconfig.Config(r, redirect.DefaultConfig())
		cfg.NativeNFTables = r.IntN(3) == 0
		plan, err := redirect.Build(cfg)
		if err != nil {
			t.Skip(err)
		}
		var opts Options
		for _, fp := range plan.Families {
			for _, tb := range fp.Tables {
				for _, c := range tb.Chains {
					for i := range c.Rules {
						ref := redirect.RuleRef{Family: fp.Family, Table: tb.Name, Chain: c.Name, Index: i}
						if r.IntN(4) == 0 {
							opts.Highlight = append(opts.Highlight, ref)
						}
						if r.IntN(3) == 0 {
							if opts.Counters == nil {
								opts.Counters = map[redirect.RuleRef]redirect.Counters{}
							}
							opts.Counters[ref] = redirect.Counters{Packets: r.Uint64() >> r.IntN(64), Bytes: r.Uint64() >> r.IntN(64)}
						}
					}
				}
			}
		}
		if r.IntN(2) == 0 {
			opts.Title = "a <title> & \"quotes\" \\ {braces}"
		}
		g, err := New(&plan, opts)
		if err != nil {
			t.Fatal(err)
		}
		checkFormat(t, FormatSVG, g.SVG())
		checkFormat(t, FormatDOT, g.DOT())
		checkFormat(t, FormatMermaid, g.Mermaid())
	})
}

// checkFormat fails t unless out is well-formed for format f: XML for SVG, balanced DOT, Mermaid
// without a raw quote or angle bracket inside a label.
func checkFormat(t testing.TB, f Format, out []byte) {
	t.Helper()
	switch f {
	case FormatSVG:
		d := xml.NewDecoder(bytes.NewReader(out))
		root := ""
		for {
			tok, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			if se, ok := tok.(xml.StartElement); ok && root == "" {
				root = se.Name.Local
			}
		}
		if root != "svg" {
			t.Fatalf("SVG root element %q", root)
		}
	case FormatDOT:
		if err := balancedDOT(string(out)); err != nil {
			t.Fatalf("DOT: %v", err)
		}
	case FormatMermaid:
		for i, line := range strings.Split(string(out), "\n") {
			if l, ok := strings.CutPrefix(strings.TrimSpace(line), "title: "); ok && i < 3 {
				line = l[1 : len(l)-1]
				line = strings.ReplaceAll(line, `\"`, "")
				if strings.Contains(line, `"`) {
					t.Fatalf("Mermaid title line %d: %s", i+1, line)
				}
				continue
			}
			if strings.Count(line, `"`)%2 != 0 {
				t.Fatalf("Mermaid line %d has unbalanced quotes: %s", i+1, line)
			}
		}
	}
}

// balancedDOT checks that the braces and brackets of a DOT text nest, outside quoted strings and
// HTML-like labels, and that strings and labels close.
func balancedDOT(s string) error {
	var stack []byte
	inString, escaped, html := false, false, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			case c == '\n':
				return fmt.Errorf("offset %d: newline in a string", i)
			}
		case html > 0:
			switch c {
			case '<':
				html++
			case '>':
				html--
			}
		case c == '"':
			inString = true
		case c == '<':
			html = 1
		case c == '{' || c == '[':
			stack = append(stack, c)
		case c == '}' || c == ']':
			open := byte('{')
			if c == ']' {
				open = '['
			}
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return fmt.Errorf("offset %d: unbalanced %c", i, c)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inString || html > 0 || len(stack) > 0 {
		return fmt.Errorf("unclosed at the end: string %v, html %d, %q", inString, html, stack)
	}
	return nil
}

// TestSVGTextSizes: no text of the SVG is smaller than 10 pixels, and the rules' is 12.
func TestSVGTextSizes(t *testing.T) {
	g, err := New(build(t, tproxyDNS()), Options{Title: "t", Counters: map[redirect.RuleRef]redirect.Counters{
		ref(redirect.IPv4, "nat", "OUTPUT", 0): {Packets: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	svg := string(g.SVG())
	sizes := regexp.MustCompile(`font-size(?:="|:)(\d+)`).FindAllStringSubmatch(svg, -1)
	if len(sizes) == 0 {
		t.Fatal("no font sizes in the SVG")
	}
	for _, m := range sizes {
		if n, _ := strconv.Atoi(m[1]); n < 10 {
			t.Errorf("font size %s px", m[1])
		}
	}
	if !strings.Contains(svg, `font-size="12"`) {
		t.Error("the SVG's text is not 12 px")
	}
}
