package graph

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Colours of the flows, distinct for the common kinds of colour blindness as far as nine allow.
var flowColor = map[redirect.Flow]string{
	redirect.FlowInbound:    "#1f77b4", // blue
	redirect.FlowOutbound:   "#d62728", // red
	redirect.FlowAgentPorts: "#8c564b", // brown
	redirect.FlowHairpin:    "#9467bd", // purple
	redirect.FlowLocalhost:  "#7f7f7f", // grey
	redirect.FlowProxyOwner: "#2ca02c", // green
	redirect.FlowExclusions: "#ff7f0e", // orange
	redirect.FlowIPv6:       "#17becf", // cyan
	redirect.FlowDNS:        "#e377c2", // pink
}

const (
	neutralColor   = "#455a64" // hooks, their edges, rules of no known flow
	highlightColor = "#ffe066" // the background of highlighted rules
	highlightLine  = "#b58900" // the outline of highlighted nodes
)

func colorOf(f redirect.Flow) string {
	if c, ok := flowColor[f]; ok {
		return c
	}
	return neutralColor
}

func flowLabel(f redirect.Flow) string {
	if t, ok := redirect.FlowTitle[f]; ok {
		return string(f) + " " + t
	}
	return string(f)
}

// DOT returns the drawing as a Graphviz digraph: a cluster per family plan, chains as HTML-like tables
// whose rows are the rules (ports r0, r1, … on their right for the edges), a legend of the flows.
func (g *Graph) DOT() []byte {
	var b bytes.Buffer
	b.WriteString("digraph shunt {\n")
	b.WriteString("\tgraph [rankdir=LR, fontname=\"monospace\", fontsize=12, nodesep=0.25, ranksep=0.9, newrank=true")
	if g.title != "" {
		fmt.Fprintf(&b, ", label=%s, labelloc=t", dotQuote(g.title))
	}
	b.WriteString("];\n")
	b.WriteString("\tnode [fontname=\"monospace\", fontsize=10];\n")
	b.WriteString("\tedge [fontname=\"monospace\", fontsize=9, arrowsize=0.7];\n")
	for _, s := range g.sections {
		fmt.Fprintf(&b, "\tsubgraph %s {\n", dotQuote("cluster_"+s.id))
		fmt.Fprintf(&b, "\t\tlabel=%s; labeljust=l; style=rounded; color=\"#b0bec5\";\n", dotQuote(s.title))
		for _, n := range s.nodes {
			b.WriteString("\t\t")
			b.WriteString(dotQuote(n.id))
			b.WriteString(" [")
			b.WriteString(dotNode(n))
			b.WriteString("];\n")
		}
		for _, e := range s.edges {
			from, to := s.nodes[e.from], s.nodes[e.to]
			src := dotQuote(from.id)
			if e.fromRow >= 0 {
				src += fmt.Sprintf(":r%d:e", e.fromRow)
			}
			dst := dotQuote(to.id)
			if to.kind == kindChain {
				dst += ":h:w"
			}
			attrs := []string{"color=" + dotQuote(colorOf(e.flow))}
			if e.fromRow < 0 {
				attrs[0] = "color=" + dotQuote(neutralColor)
			}
			if e.label != "" {
				attrs = append(attrs, "label="+dotQuote(e.label))
			}
			switch {
			case e.highlight:
				attrs = append(attrs, "penwidth=3.5")
			case g.highlight:
				attrs = append(attrs, "style=dashed")
			default:
				attrs = append(attrs, "penwidth=1.4")
			}
			fmt.Fprintf(&b, "\t\t%s -> %s [%s];\n", src, dst, strings.Join(attrs, ", "))
		}
		b.WriteString("\t}\n")
	}
	if len(g.flows) > 0 {
		b.WriteString("\tsubgraph \"cluster_legend\" {\n\t\tlabel=\"flows\"; labeljust=l; style=rounded; color=\"#b0bec5\";\n")
		b.WriteString("\t\t\"legend\" [shape=plain, label=<<table border=\"0\" cellspacing=\"2\" cellpadding=\"3\">")
		for _, f := range g.flows {
			fmt.Fprintf(&b, "<tr><td bgcolor=\"%s\" width=\"14\"> </td><td align=\"left\">%s</td></tr>", colorOf(f), htmlEscape(flowLabel(f)))
		}
		if g.highlight {
			fmt.Fprintf(&b, "<tr><td bgcolor=\"%s\" width=\"14\"> </td><td align=\"left\">highlighted path</td></tr>", highlightColor)
		}
		if g.ordered {
			b.WriteString("<tr><td>1 2</td><td align=\"left\">on a hook's edges: the order in which its tables see a packet</td></tr>")
		}
		b.WriteString("</table>>];\n\t}\n")
	}
	b.WriteString("}\n")
	return b.Bytes()
}

func dotNode(n *node) string {
	switch n.kind {
	case kindHook:
		attrs := fmt.Sprintf("shape=box, style=\"rounded,filled\", fillcolor=%s, fontcolor=\"white\", label=%s",
			dotQuote(neutralColor), dotQuote(n.title+"\n"+n.sub))
		if n.highlight {
			attrs += ", penwidth=3, color=" + dotQuote(highlightLine)
		}
		return attrs
	case kindVerdict:
		attrs := fmt.Sprintf("shape=box, style=\"rounded,filled,bold\", color=%s, fillcolor=\"white\", label=%s",
			dotQuote(colorOf(n.flow)), dotQuote(n.title+"\n"+n.sub))
		if n.highlight {
			attrs += ", penwidth=3, fillcolor=" + dotQuote(highlightColor)
		}
		return attrs
	}
	var b strings.Builder
	border, color := "1", "#546e7a"
	if n.highlight {
		border, color = "3", highlightLine
	}
	head := "#cfd8dc"
	if n.builtin {
		head = "#90a4ae"
	}
	fmt.Fprintf(&b, "shape=plain, label=<<table border=\"%s\" color=\"%s\" cellborder=\"0\" cellspacing=\"0\" cellpadding=\"3\">", border, color)
	fmt.Fprintf(&b, "<tr><td port=\"h\" colspan=\"3\" bgcolor=\"%s\"><b>%s</b> <font point-size=\"9\">%s</font></td></tr>",
		head, htmlEscape(n.title), htmlEscape(n.tableNote()))
	if len(n.rows) == 0 {
		b.WriteString("<tr><td colspan=\"3\"><i>no rules</i></td></tr>")
	}
	for i, r := range n.rows {
		bg := ""
		if r.highlight {
			bg = fmt.Sprintf(" bgcolor=\"%s\"", highlightColor)
		}
		text := htmlEscape(r.text)
		if r.counters != nil {
			text += " <font color=\"#37474f\">[" + htmlEscape(countersText(*r.counters)) + "]</font>"
		}
		if r.highlight {
			text = "<b>" + text + "</b>"
		}
		fmt.Fprintf(&b, "<tr><td%s align=\"right\"><font color=\"#78909c\">#%d</font></td><td%s><font color=\"%s\"><b>%s</b></font></td><td%s port=\"r%d\" align=\"left\">%s</td></tr>",
			bg, i, bg, colorOf(r.flow), htmlEscape(string(r.flow)), bg, i, text)
	}
	b.WriteString("</table>>")
	return b.String()
}

// dotQuote quotes s as a DOT string.
func dotQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

// htmlEscape escapes s for DOT's HTML-like labels and for XML.
func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;").Replace(s)
}
