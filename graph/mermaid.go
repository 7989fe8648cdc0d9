package graph

import (
	"bytes"
	"fmt"
	"strings"
)

// Mermaid returns the drawing as a Mermaid flowchart (left to right), which GitHub renders in a
// ```mermaid block: a subgraph per family plan, each chain a node whose label lists its rules, the
// edges labelled with the index of the rule they leave from and coloured by its flow, and a legend.
// Mermaid has no ports: an edge leaves the chain's node, not the rule's row.
func (g *Graph) Mermaid() []byte {
	var b bytes.Buffer
	// Rules are long lines: no wrapping at Mermaid's 200 pixels.
	b.WriteString("---\n")
	if g.title != "" {
		fmt.Fprintf(&b, "title: %s\n", mermaidTitle(g.title))
	}
	b.WriteString("config:\n  flowchart:\n    wrappingWidth: 900\n---\n")
	b.WriteString("flowchart LR\n")
	var styles []string
	link := 0
	for _, s := range g.sections {
		fmt.Fprintf(&b, "  subgraph %s[\"%s\"]\n    direction LR\n", s.id, mermaidEscape(s.title))
		for _, n := range s.nodes {
			id := mermaidID(n.id)
			switch n.kind {
			case kindHook:
				fmt.Fprintf(&b, "    %s([\"%s<br/>%s\"])\n", id, mermaidEscape(n.title), mermaidEscape(n.sub))
				styles = append(styles, fmt.Sprintf("  style %s fill:%s,color:#fff,stroke:%s%s", id, neutralColor, neutralColor, mermaidEmphasis(n.highlight)))
			case kindVerdict:
				fmt.Fprintf(&b, "    %s[[\"%s<br/>%s\"]]\n", id, mermaidEscape(n.title), mermaidEscape(n.sub))
				fill := "#fff"
				if n.highlight {
					fill = highlightColor
				}
				styles = append(styles, fmt.Sprintf("  style %s fill:%s,stroke:%s,stroke-width:2px", id, fill, colorOf(n.flow)))
			default:
				lines := []string{"<b>" + mermaidEscape(n.title) + "</b> " + mermaidEscape(n.tableNote())}
				for i, r := range n.rows {
					line := fmt.Sprintf("#35;%d %s %s", i, r.flow, mermaidEscape(r.text))
					if r.counters != nil {
						line += " [" + mermaidEscape(countersText(*r.counters)) + "]"
					}
					if r.highlight {
						line = "<b>▶ " + line + "</b>"
					}
					lines = append(lines, line)
				}
				if len(n.rows) == 0 {
					lines = append(lines, "<i>no rules</i>")
				}
				fmt.Fprintf(&b, "    %s[\"%s\"]\n", id, strings.Join(lines, "<br/>"))
				fill := "#eceff1"
				if n.builtin {
					fill = "#cfd8dc"
				}
				styles = append(styles, fmt.Sprintf("  style %s fill:%s,stroke:#546e7a,text-align:left%s", id, fill, mermaidEmphasis(n.highlight)))
			}
		}
		b.WriteString("  end\n")
		for _, e := range s.edges {
			from, to := mermaidID(s.nodes[e.from].id), mermaidID(s.nodes[e.to].id)
			label, color := e.label, neutralColor
			if e.fromRow >= 0 {
				label, color = fmt.Sprintf("#35;%d", e.fromRow), colorOf(e.flow)
			}
			arrow := "-->"
			if g.highlight && !e.highlight {
				arrow = "-.->"
			}
			if label != "" {
				arrow += "|\"" + label + "\"|"
			}
			fmt.Fprintf(&b, "  %s %s %s\n", from, arrow, to)
			width := "1.5px"
			if e.highlight {
				width = "4px"
			}
			styles = append(styles, fmt.Sprintf("  linkStyle %d stroke:%s,stroke-width:%s", link, color, width))
			link++
		}
	}
	if len(g.flows) > 0 {
		b.WriteString("  subgraph legend[\"flows\"]\n    direction TB\n")
		for _, f := range g.flows {
			id := "legend_" + mermaidID(string(f))
			fmt.Fprintf(&b, "    %s[\"%s\"]\n", id, mermaidEscape(flowLabel(f)))
			styles = append(styles, fmt.Sprintf("  style %s fill:%s,color:#fff,stroke:%s", id, colorOf(f), colorOf(f)))
		}
		if g.ordered {
			b.WriteString("    legend_order[\"1, 2, 3 on a hook's edges: the order in which its tables see a packet\"]\n")
		}
		if g.highlight {
			b.WriteString("    legend_path[\"highlighted path\"]\n")
			styles = append(styles, fmt.Sprintf("  style legend_path fill:%s,stroke:%s,stroke-width:3px", highlightColor, highlightLine))
		}
		b.WriteString("  end\n")
	}
	for _, s := range styles {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func mermaidEmphasis(on bool) string {
	if on {
		return ",stroke-width:4px,stroke:" + highlightLine
	}
	return ""
}

// mermaidID turns a node id into a Mermaid identifier: letters, digits and '_'.
func mermaidID(id string) string {
	var b strings.Builder
	for _, c := range id {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// mermaidEscape escapes s for a quoted Mermaid label, with Mermaid's entity codes.
func mermaidEscape(s string) string {
	return strings.NewReplacer("#", "#35;", `"`, "#quot;", "<", "#lt;", ">", "#gt;", "&", "#amp;", "\n", " ").Replace(s)
}

// mermaidTitle keeps the title on one line of the front matter, quoted.
func mermaidTitle(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", " ").Replace(s) + `"`
}
