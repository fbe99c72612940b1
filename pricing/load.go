package pricing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadPlans parses a YAML document that is either a list of plans or a mapping with a `plans:` key (as in the
// full config, with nothing else beside it) and builds the catalog with NewCatalog, paths prefixed "plans".
//
// Unknown keys are rejected (yaml.v3 KnownFields), as are duplicate keys, values of the wrong shape and a second
// document. Malformed YAML is reported with its line number. Structural problems are reported with their path
// and line, together with the validation problems of every plan that has none, so one round shows everything;
// a plan that is structurally broken is not validated further, since its fields are only partly decoded.
func LoadPlans(data []byte) (*Catalog, error) {
	root, extra, err := parseDocuments(data)
	switch {
	case err != nil:
		return nil, syntaxError(data, err)
	case root == nil:
		return nil, errors.New("decode plans: empty document (want a list of plans or a mapping with a plans key)")
	case extra != nil:
		return nil, fmt.Errorf("decode plans: line %d: a second YAML document (want one)", extra.Line)
	}

	if len(root.Content) == 0 {
		return nil, errors.New("decode plans: empty document (want a list of plans or a mapping with a plans key)")
	}
	top := root.Content[0]
	idx := newNodeIndex()
	var target any
	var wrapped struct {
		Plans []PlanSpec `yaml:"plans"`
	}
	var list []PlanSpec
	var planNodes []*yaml.Node
	switch top.Kind {
	case yaml.SequenceNode:
		idx.walk(top, "plans")
		target = &list
		planNodes = top.Content
	case yaml.MappingNode:
		plans := valueOf(top, "plans")
		if plans == nil {
			return nil, fmt.Errorf("plans: required (line %d: the mapping has no plans key)", top.Line)
		}
		idx.walk(top, "")
		target = &wrapped
		if plans.Kind == yaml.AliasNode {
			plans = plans.Alias
		}
		if plans.Kind == yaml.SequenceNode {
			planNodes = plans.Content
		}
	default:
		return nil, fmt.Errorf("decode plans: line %d: want a list of plans or a mapping with a plans key", top.Line)
	}

	// Unknown keys are found by a strict typed decode: yaml.v3 offers KnownFields only on a Decoder, not on
	// Node.Decode. Its result is not used for the specs, because yaml.v3 drops a list element that fails to
	// decode and the indices of the later plans (and so their paths) would shift.
	var structural []error
	seen := make(map[string]bool)
	broken := make(map[int]bool) // plans with structural problems, left out of validation
	brokenAll := false
	report := func(msg string) {
		path, text := idx.explain(msg)
		if seen[text] {
			return
		}
		seen[text] = true
		structural = append(structural, errors.New(text))
		if i, ok := planIndex(path); ok {
			broken[i] = true
		} else {
			brokenAll = true
		}
	}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(target); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("decode plans: %w", err)
		}
		for _, msg := range te.Errors {
			report(msg)
		}
	}

	// The specs themselves, one per list element, so that plans[i] is the i-th element whatever happened to
	// the others.
	specs := make([]PlanSpec, len(planNodes))
	for i, n := range planNodes {
		if err := n.Decode(&specs[i]); err != nil {
			broken[i] = true
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				return nil, fmt.Errorf("decode plans: %w", err)
			}
			for _, msg := range te.Errors {
				report(msg) // already reported by the strict decode, unless yaml.v3 words it differently
			}
		}
	}
	if brokenAll {
		return nil, errors.Join(structural...)
	}
	cat, err := newCatalog(specs, "plans", broken)
	if err != nil || len(structural) > 0 {
		return nil, errors.Join(append(structural, err)...)
	}
	return cat, nil
}

// parseDocuments parses the first document of data and, to refuse it, a second one; nil for a missing one.
func parseDocuments(data []byte) (first, second *yaml.Node, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs [2]*yaml.Node
	for i := range docs {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, nil, err
		}
		docs[i] = &n
	}
	return docs[0], docs[1], nil
}

// locateBudget bounds the work of finding the line of a syntax error, which parses one prefix of the document
// per line: past it (a document of thousands of lines) yaml.v3's own line is reported as it is.
const locateBudget = 8 << 20 // bytes parsed in all

var yamlErrorRE = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// syntaxError reports malformed YAML with the line where it breaks. yaml.v3 gives the line where the enclosing
// block began, off by one (a mis-indented key on line 4 of a list that starts on line 2 is "line 1"). Cutting a
// YAML document at the end of a line leaves it well-formed until the broken line is included, so the first
// prefix that fails to parse ends at the line to report. The search starts at yaml.v3's line, just before the
// enclosing block, so that a valid value spanning lines before it (a quoted or flow value, which a cut leaves
// open) is not mistaken for the problem; a value left open at the problem is reported where it opens.
func syntaxError(data []byte, err error) error {
	m := yamlErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("decode plans: %w", err)
	}
	from := 1
	if m[1] != "" {
		n, _ := strconv.Atoi(m[1])
		from = max(1, n-1)
	}
	end, parsed := 0, 0
	for i, line := range bytes.SplitAfter(data, []byte("\n")) {
		end += len(line)
		if i+1 < from {
			continue
		}
		if parsed += end; parsed > locateBudget {
			break
		}
		if _, _, perr := parseDocuments(data[:end]); perr != nil {
			return fmt.Errorf("decode plans: line %d: %s", i+1, m[2])
		}
	}
	return fmt.Errorf("decode plans: %w", err)
}

// valueOf returns the value of key in mapping m, or nil.
func valueOf(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

var planIndexRE = regexp.MustCompile(`^plans\[(\d+)\]`)

// planIndex returns i when path lies inside plans[i].
func planIndex(path string) (int, bool) {
	m := planIndexRE.FindStringSubmatch(path)
	if m == nil {
		return 0, false
	}
	i, err := strconv.Atoi(m[1])
	return i, err == nil
}

// nodeIndex maps line numbers of the parsed document to config paths, so that yaml.v3's line-only unmarshal
// errors can be reported with the same "plans[2].brackets[1].up_to" paths as validation problems.
type nodeIndex struct {
	keys       map[keyAt]string // a mapping key -> the path it names
	containers map[int]string   // line -> path of the deepest mapping or list starting there
	scalars    map[int]string   // line -> path of the last scalar value there
}

type keyAt struct {
	line int
	key  string
}

func newNodeIndex() *nodeIndex {
	return &nodeIndex{keys: make(map[keyAt]string), containers: make(map[int]string), scalars: make(map[int]string)}
}

// walk records the paths under n. Aliases are not followed: a shared anchor has one place in the text.
func (ix *nodeIndex) walk(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.SequenceNode:
		ix.containers[n.Line] = path
		for i, c := range n.Content {
			ix.walk(c, fmt.Sprintf("%s[%d]", path, i))
		}
	case yaml.MappingNode:
		ix.containers[n.Line] = path
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			ix.keys[keyAt{k.Line, k.Value}] = child
			ix.walk(n.Content[i+1], child)
		}
	default:
		ix.scalars[n.Line] = path
	}
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (.+) not found in type .+$`)
	duplicateKeyRE = regexp.MustCompile(`^line (\d+): mapping key (".*") already defined at line (\d+)$`)
	wrongShapeRE   = regexp.MustCompile("^line (\\d+): cannot unmarshal (\\S+)(?: `.*`)? into (\\S+)$")
)

// explain rewrites one yaml.v3 unmarshal error as "path: reason (line N)" and returns the path ("" when the
// message is not one it knows, which is then kept as yaml.v3 wrote it).
func (ix *nodeIndex) explain(msg string) (path, text string) {
	if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		if p, ok := ix.keys[keyAt{line, m[2]}]; ok {
			return p, fmt.Sprintf("%s: unknown field (line %d)", p, line)
		}
	}
	if m := duplicateKeyRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, err := strconv.Unquote(m[2])
		if p, ok := ix.keys[keyAt{line, key}]; ok && err == nil {
			return p, fmt.Sprintf("%s: defined twice (lines %s and %d)", p, m[3], line)
		}
	}
	if m := wrongShapeRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		lookup := ix.scalars
		if m[2] == "!!seq" || m[2] == "!!map" {
			lookup = ix.containers
		}
		want := "a mapping"
		switch {
		case m[3] == "string":
			want = "a single value"
		case strings.HasPrefix(m[3], "[]"):
			want = "a list"
		}
		if p, ok := lookup[line]; ok && p != "" {
			return p, fmt.Sprintf("%s: want %s, got %s (line %d)", p, want, m[2], line)
		}
	}
	return "", msg
}
