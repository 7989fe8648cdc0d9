package graph

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"
)

// The SVG is laid out in layers, as Graphviz's dot would, but for the one shape a plan has: per
// family plan, columns left to right — the hooks, the built-in chains (grouped by hook in the order
// the kernel runs the tables), the other chains one column past the deepest chain that jumps to them,
// then the verdicts. A column is as wide as its widest box; within it boxes are stacked in the order
// of the first edge into each, each as high as that edge allows, so that most edges run level. An
// edge leaves the right end of its rule's row and enters its target's header as a cubic Bézier curve;
// edges are drawn under the boxes. Text is monospace, so its width is known without font metrics,
// and every coordinate is a whole pixel: the same plan gives the same bytes.
const (
	fontSize   = 12
	charW      = 7.3 // advance of a 12px monospace glyph (DejaVu Sans Mono, Menlo, Consolas: 0.6 em)
	rowH       = 19
	headH      = 26
	padX       = 8
	idxW       = 30 // "#12" column
	flowW      = 26 // "F2" column
	colGap     = 84
	nodeGap    = 18
	margin     = 24
	hookH      = 42
	verdictH   = 42
	maxRuleLen = 80 // longer rule texts are cut, the whole text in the row's tooltip
)

type box struct{ x, y, w, h int }

func textW(s string) int { return int(math.Ceil(float64(utf8.RuneCountInString(s)) * charW)) }

// svgRuleText is a row's text as the SVG shows it: at most maxRuleLen characters, the matches cut
// short rather than the target.
func svgRuleText(s string) string {
	if utf8.RuneCountInString(s) <= maxRuleLen {
		return s
	}
	match, target := s, ""
	if i := strings.LastIndex(s, " → "); i >= 0 {
		match, target = s[:i], s[i:]
	}
	keep := max(maxRuleLen-utf8.RuneCountInString(target)-1, 8)
	if r := []rune(match); len(r) > keep {
		match = string(r[:keep])
	}
	return match + "…" + target
}

func (n *node) size() (w, h int) {
	switch n.kind {
	case kindHook:
		return max(textW(n.title), textW(n.sub)) + 2*padX + 16, hookH
	case kindVerdict:
		return max(textW(n.title), textW(n.sub)) + 2*padX + 12, verdictH
	}
	w = textW(n.title+"   "+n.tableNote()) + 2*padX
	for _, r := range n.rows {
		rw := padX + idxW + flowW + textW(svgRuleText(r.text)) + padX
		if r.counters != nil {
			rw += 18 + textW(countersText(*r.counters))
		}
		w = max(w, rw)
	}
	rows := max(len(n.rows), 1)
	return w, headH + rows*rowH + 4
}

// layout places the nodes of s from y0 down and returns the boxes and the height used.
func (s *section) layout(y0 int) (boxes []box, height, width int, colRight []int) {
	boxes = make([]box, len(s.nodes))
	cols := 0
	for _, n := range s.nodes {
		cols = max(cols, n.col+1)
	}
	widths := make([]int, cols)
	for i, n := range s.nodes {
		w, h := n.size()
		boxes[i].w, boxes[i].h = w, h
		widths[n.col] = max(widths[n.col], w)
	}
	xs := make([]int, cols)
	colRight = make([]int, cols)
	x := margin
	for c := range cols {
		xs[c] = x
		colRight[c] = x + widths[c]
		x += widths[c] + colGap
	}
	width = x - colGap + margin
	// incoming[i]: the edges into node i.
	incoming := make([][]int, len(s.nodes))
	for ei, e := range s.edges {
		incoming[e.to] = append(incoming[e.to], ei)
	}
	placed := make([]bool, len(s.nodes))
	bottom := y0
	place := func(col int, order []int, want func(i int) int) {
		cursor := y0
		for _, i := range order {
			y := max(cursor, want(i))
			boxes[i].x, boxes[i].y = xs[col], y
			placed[i] = true
			cursor = y + boxes[i].h + nodeGap
			bottom = max(bottom, y+boxes[i].h)
		}
	}
	// Column 1 first: the built-in chains in hook order, then chains nothing jumps to.
	var col1 []int
	for i, n := range s.nodes {
		if n.col == 1 {
			col1 = append(col1, i)
		}
	}
	place(1, col1, func(int) int { return y0 })
	// Hooks level with their first chain.
	var hooksOrder []int
	for i, n := range s.nodes {
		if n.col == 0 {
			hooksOrder = append(hooksOrder, i)
		}
	}
	place(0, hooksOrder, func(i int) int {
		for _, ei := range incomingFrom(s.edges, i) {
			to := boxes[s.edges[ei].to]
			return to.y + headH/2 - hookH/2
		}
		return y0
	})
	// Every further column: by the first (highest) placed edge into each node.
	for col := 2; col < cols; col++ {
		var order []int
		wantY := map[int]int{}
		for i, n := range s.nodes {
			if n.col != col {
				continue
			}
			order = append(order, i)
			best := math.MaxInt
			for _, ei := range incoming[i] {
				e := s.edges[ei]
				if !placed[e.from] {
					continue
				}
				best = min(best, s.sourceY(boxes, e))
			}
			if best == math.MaxInt {
				best = y0
			}
			top := best - headH/2
			if n.kind != kindChain {
				top = best - boxes[i].h/2
			}
			wantY[i] = max(y0, top)
		}
		slices.SortStableFunc(order, func(a, b int) int { return wantY[a] - wantY[b] })
		place(col, order, func(i int) int { return wantY[i] })
	}
	return boxes, bottom - y0, width, colRight
}

// incomingFrom returns the edges that leave node i.
func incomingFrom(edges []edge, i int) []int {
	var out []int
	for ei, e := range edges {
		if e.from == i {
			out = append(out, ei)
		}
	}
	return out
}

// sourceY is where edge e leaves its node: the middle of its rule's row, or of the hook.
func (s *section) sourceY(boxes []box, e edge) int {
	b := boxes[e.from]
	if e.fromRow < 0 {
		return b.y + b.h/2
	}
	return b.y + headH + e.fromRow*rowH + rowH/2
}

// targetY is where edge e enters its node: the middle of a chain's header, or of a verdict.
func (s *section) targetY(boxes []box, e edge) int {
	b := boxes[e.to]
	if s.nodes[e.to].kind == kindChain {
		return b.y + headH/2
	}
	return b.y + b.h/2
}

// SVG returns the drawing as a standalone SVG document, laid out by this package.
func (g *Graph) SVG() []byte {
	type placedSection struct {
		s        *section
		boxes    []box
		colRight []int
		y, h     int
		titleY   int
	}
	y := margin
	var body bytes.Buffer
	width := 640
	if g.title != "" {
		y += 22
	}
	legendY := y
	// The legend: a swatch and the name of every flow drawn, in rows as wide as the drawing.
	items := []struct{ color, label string }{}
	for _, f := range g.flows {
		items = append(items, struct{ color, label string }{colorOf(f), flowLabel(f)})
	}
	if g.highlight {
		items = append(items, struct{ color, label string }{highlightColor, "highlighted path"})
	}
	var placedSections []placedSection
	y += 8 // the legend's rows are added once the width is known
	for i := range g.sections {
		s := &g.sections[i]
		ps := placedSection{s: s, titleY: y + 20}
		boxes, h, w, colRight := s.layout(y + 34)
		ps.boxes, ps.colRight, ps.y, ps.h = boxes, colRight, y, h+34
		width = max(width, w)
		placedSections = append(placedSections, ps)
		y += ps.h + 28
	}
	// Legend rows.
	var legend bytes.Buffer
	lx, ly := margin, legendY
	legendRows := 0
	if len(items) > 0 {
		legendRows = 1
		fmt.Fprintf(&legend, "<text x=\"%d\" y=\"%d\" class=\"lt\">flows:</text>\n", lx, ly+13)
		lx += textW("flows:") + 12
		for _, it := range items {
			w := 14 + 6 + textW(it.label) + 18
			if lx+w > width-margin && lx > margin+textW("flows:")+12 {
				lx, ly = margin+textW("flows:")+12, ly+22
				legendRows++
			}
			fmt.Fprintf(&legend, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"14\" rx=\"3\" fill=\"%s\"/>", lx, ly+2, it.color)
			fmt.Fprintf(&legend, "<text x=\"%d\" y=\"%d\" class=\"lt\">%s</text>\n", lx+20, ly+13, htmlEscape(it.label))
			lx += w
		}
		if g.ordered {
			lx, ly = margin, ly+22
			legendRows++
			fmt.Fprintf(&legend, "<text x=\"%d\" y=\"%d\" class=\"lt\">1, 2, 3 on a hook's edges: the order in which its tables see a packet</text>\n", lx, ly+13)
		}
		if g.counters {
			lx, ly = margin, ly+22
			legendRows++
			fmt.Fprintf(&legend, "<text x=\"%d\" y=\"%d\" class=\"lt\">[packets, bytes] beside a rule: what the kernel counted for it</text>\n", lx, ly+13)
		}
	}
	shift := legendRows*22 + 6
	height := y - 28 + margin + shift

	for _, ps := range placedSections {
		s := ps.s
		sy := ps.y + shift
		fmt.Fprintf(&body, "<g id=\"%s\">\n", htmlEscape(s.id))
		fmt.Fprintf(&body, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"8\" class=\"section\"/>\n", margin/2, sy, width-margin, ps.h+14)
		fmt.Fprintf(&body, "<text x=\"%d\" y=\"%d\" class=\"st\">%s</text>\n", margin, ps.titleY+shift, htmlEscape(s.title))
		boxes := make([]box, len(ps.boxes))
		for i, b := range ps.boxes {
			b.y += shift
			boxes[i] = b
		}
		// Edges first, under the boxes; emphasised ones last.
		for pass := range 2 {
			for _, e := range s.edges {
				if e.highlight != (pass == 1) {
					continue
				}
				g.svgEdge(&body, s, boxes, ps.colRight, e)
			}
		}
		for i, n := range s.nodes {
			svgNode(&body, n, boxes[i])
		}
		body.WriteString("</g>\n")
	}

	var b bytes.Buffer
	fmt.Fprintf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
	fmt.Fprintf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"%d\">\n",
		width, height, width, height, fontSize)
	if g.title != "" {
		fmt.Fprintf(&b, "<title>%s</title>\n", htmlEscape(g.title))
	}
	b.WriteString("<style>\n" +
		".t{fill:#263238}.th{font-weight:bold;fill:#263238}.tt{font-size:10px;fill:#546e7a}.ti{fill:#90a4ae}\n" +
		".tf{font-weight:bold}.tc{fill:#37474f;font-size:11px}.lt{fill:#263238}.st{font-size:15px;font-weight:bold;fill:#263238}\n" +
		".section{fill:#fafbfc;stroke:#cfd8dc}.el{font-size:10px;fill:#455a64}\n" +
		"</style>\n")
	b.WriteString("<defs>\n")
	colors := []string{neutralColor}
	for _, f := range allFlows() {
		colors = append(colors, colorOf(f))
	}
	for _, c := range colors {
		fmt.Fprintf(&b, "<marker id=\"a%s\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"10\" markerHeight=\"10\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"%s\"/></marker>\n",
			c[1:], c)
	}
	b.WriteString("</defs>\n")
	fmt.Fprintf(&b, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width, height)
	if g.title != "" {
		fmt.Fprintf(&b, "<text x=\"%d\" y=\"%d\" class=\"st\" style=\"font-size:17px\">%s</text>\n", margin, margin+8, htmlEscape(g.title))
	}
	b.Write(legend.Bytes())
	b.Write(body.Bytes())
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// svgEdge draws e: level from its rule's row to the right of the row's column, where no box of the
// column can be in the way, then a curve into its target.
func (g *Graph) svgEdge(b *bytes.Buffer, s *section, boxes []box, colRight []int, e edge) {
	from, to := boxes[e.from], boxes[e.to]
	x0, y1 := from.x+from.w, s.sourceY(boxes, e)
	x1 := max(x0, colRight[s.nodes[e.from].col])
	x2, y2 := to.x-2, s.targetY(boxes, e)
	color := colorOf(e.flow)
	if e.fromRow < 0 {
		color = neutralColor
	}
	dx := max(30, (x2-x1)/2)
	width, extra := "1.6", ""
	switch {
	case e.highlight:
		width = "3.5"
	case g.highlight:
		extra = " stroke-opacity=\"0.35\" stroke-dasharray=\"5 4\""
	}
	fmt.Fprintf(b, "<path d=\"M%d,%dH%dC%d,%d %d,%d %d,%d\" fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s marker-end=\"url(#a%s)\"/>\n",
		x0, y1, x1, x1+dx, y1, x2-dx, y2, x2, y2, color, width, extra, color[1:])
	if e.label != "" {
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"el\">%s</text>\n", x2-10, y2-5, htmlEscape(e.label))
	}
}

func svgNode(b *bytes.Buffer, n *node, bx box) {
	outline, width := "#546e7a", "1"
	if n.highlight {
		outline, width = highlightLine, "3"
	}
	switch n.kind {
	case kindHook:
		fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"%d\" fill=\"%s\" stroke=\"%s\" stroke-width=\"%s\"/>\n",
			bx.x, bx.y, bx.w, bx.h, bx.h/2, neutralColor, outline, width)
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"tf\" fill=\"#ffffff\">%s</text>\n", bx.x+bx.w/2, bx.y+17, htmlEscape(n.title))
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" style=\"font-size:10px\" fill=\"#cfd8dc\">%s</text>\n", bx.x+bx.w/2, bx.y+32, htmlEscape(n.sub))
		return
	case kindVerdict:
		fill := "#ffffff"
		if n.highlight {
			fill = highlightColor
		}
		color := colorOf(n.flow)
		fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"6\" fill=\"%s\" stroke=\"%s\" stroke-width=\"2.5\"/>\n",
			bx.x, bx.y, bx.w, bx.h, fill, color)
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"tf\" fill=\"%s\">%s</text>\n", bx.x+bx.w/2, bx.y+17, color, htmlEscape(n.title))
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"tt\">%s</text>\n", bx.x+bx.w/2, bx.y+32, htmlEscape(n.sub))
		return
	}
	head := "#e3e8eb"
	if n.builtin {
		head = "#b0bec5"
	}
	fmt.Fprintf(b, "<g><title>%s %s</title>\n", htmlEscape(n.table), htmlEscape(n.title))
	fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"4\" fill=\"#ffffff\" stroke=\"%s\" stroke-width=\"%s\"/>\n",
		bx.x, bx.y, bx.w, bx.h, outline, width)
	fmt.Fprintf(b, "<path d=\"M%d,%dh%dv%dh%dz\" fill=\"%s\"/>\n", bx.x+1, bx.y+1, bx.w-2, headH-1, -(bx.w - 2), head)
	fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" class=\"th\">%s</text>", bx.x+padX, bx.y+18, htmlEscape(n.title))
	fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"tt\">%s</text>\n", bx.x+bx.w-padX, bx.y+17, htmlEscape(n.tableNote()))
	b.WriteString("</g>\n")
	if len(n.rows) == 0 {
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" class=\"ti\" font-style=\"italic\">no rules</text>\n", bx.x+padX, bx.y+headH+14)
	}
	for i, r := range n.rows {
		ry := bx.y + headH + i*rowH
		color := colorOf(r.flow)
		fmt.Fprintf(b, "<g><title>%s %s: %s</title>\n", htmlEscape(r.ref.String()), htmlEscape(flowLabel(r.flow)), htmlEscape(r.text+" — "+r.why))
		if r.highlight {
			fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", bx.x+1, ry+1, bx.w-2, rowH-1, highlightColor)
		} else if i%2 == 1 {
			fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#f5f7f8\"/>\n", bx.x+1, ry+1, bx.w-2, rowH-1)
		}
		fmt.Fprintf(b, "<rect x=\"%d\" y=\"%d\" width=\"4\" height=\"%d\" fill=\"%s\"/>\n", bx.x+1, ry+1, rowH-1, color)
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" class=\"ti\">#%d</text>", bx.x+padX+2, ry+14, i)
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" class=\"tf\" fill=\"%s\">%s</text>", bx.x+padX+idxW, ry+14, color, htmlEscape(string(r.flow)))
		weight := ""
		if r.highlight {
			weight = " font-weight=\"bold\""
		}
		fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" class=\"t\"%s>%s</text>", bx.x+padX+idxW+flowW, ry+14, weight, htmlEscape(svgRuleText(r.text)))
		if r.counters != nil {
			cls := "tc"
			if r.counters.Packets == 0 {
				cls = "ti"
			}
			fmt.Fprintf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"%s\">%s</text>", bx.x+bx.w-padX, ry+14, cls, htmlEscape(countersText(*r.counters)))
		}
		b.WriteString("\n</g>\n")
	}
}
