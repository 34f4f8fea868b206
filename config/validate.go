package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// validator collects the problems of one pipelines file. It knows the line
// of every path it walked, so problems found later (in compile) still point
// at the right line.
type validator struct {
	list  []error
	lines map[string]int // dotted path → line of its node
	// byLine maps a scalar value's line back to its path, to translate
	// yaml.v3's "line N: cannot unmarshal" messages.
	byLine map[int]string
	// structural is the number of problems found while walking and decoding;
	// later checks on the same paths are dropped as noise.
	structural int
	// raw is the decoded file, for checks that need every declared name
	// (also the ones whose entries are invalid).
	raw *rawFile
}

func (v *validator) add(path, format string, args ...any) {
	if v.reported(path) {
		return
	}
	v.list = append(v.list, &FieldError{Path: path, Line: v.lineOf(path), Msg: fmt.Sprintf(format, args...)})
}

// reported says whether a structural problem was already reported at path or
// inside it (a wrong-typed section makes its values meaningless).
func (v *validator) reported(path string) bool {
	for _, e := range v.list[:min(v.structural, len(v.list))] {
		var fe *FieldError
		if errors.As(e, &fe) && (fe.Path == path || strings.HasPrefix(fe.Path, path+".")) {
			return true
		}
	}
	return false
}

// lineOf is the line of path, or of its nearest ancestor that has one.
func (v *validator) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := v.lines[p]; ok {
			return l
		}
		i := strings.LastIndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// err returns every problem, in file order.
func (v *validator) err() error {
	if len(v.list) == 0 {
		return nil
	}
	slices.SortStableFunc(v.list, func(a, b error) int {
		return lineOfErr(a) - lineOfErr(b)
	})
	return &Error{Problems: v.list}
}

func lineOfErr(err error) int {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Line
	}
	return 0
}

func typeOf(v any) reflect.Type { return reflect.TypeOf(v).Elem() }

var durationType = reflect.TypeOf(time.Duration(0))

// walk checks node against t: every mapping key must be a field (by its yaml
// tag) of the struct it decodes into. It records the line of every path.
// Unknown keys are the commonest mistake in a hand-written YAML file, and a
// strict decoder that only says "field x not found in type config.rawIO" does
// not tell the user where.
func (v *validator) walk(node *yaml.Node, path string, t reflect.Type) {
	if v.byLine == nil {
		v.byLine = map[int]string{}
	}
	if node.Kind == yaml.DocumentNode {
		if len(node.Content) > 0 {
			v.walk(node.Content[0], path, t)
		}
		return
	}
	if node.Kind == yaml.AliasNode {
		if node.Alias != nil {
			v.walk(node.Alias, path, t)
		}
		return
	}
	if _, ok := v.lines[path]; path != "" && !ok {
		v.lines[path] = node.Line
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if node.Kind == yaml.ScalarNode {
		if path != "" {
			v.byLine[node.Line] = path
		}
		if node.Tag == "!!null" {
			return
		}
		if t == durationType && node.Tag == "!!int" {
			v.add(path, "%s is a bare number: write a duration with its unit, like %ss or %sm", node.Value, node.Value, node.Value)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			v.add(path, "must be a mapping of keys to values")
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, val := node.Content[i], node.Content[i+1]
			if k.Value == "<<" {
				v.walk(val, path, t)
				continue
			}
			child := join(path, k.Value)
			ft, ok := fields[k.Value]
			if !ok {
				v.lines[child] = k.Line
				v.add(child, "unknown key%s", suggest(k.Value, fields))
				continue
			}
			v.lines[child] = k.Line
			v.walk(val, child, ft)
		}
	case reflect.Map:
		if node.Kind != yaml.MappingNode {
			v.add(path, "must be a mapping of names to entries")
			return
		}
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, val := node.Content[i], node.Content[i+1]
			child := join(path, k.Value)
			v.lines[child] = k.Line
			v.walk(val, child, t.Elem())
		}
	case reflect.Slice:
		if node.Kind != yaml.SequenceNode {
			v.add(path, "must be a list")
			return
		}
		for i, el := range node.Content {
			v.walk(el, path+"["+strconv.Itoa(i)+"]", t.Elem())
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the yaml keys of struct t to their field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// suggest names the closest known key, for typos.
func suggest(key string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for k := range fields {
		if d := distance(key, k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	known := make([]string, 0, len(fields))
	for k := range fields {
		known = append(known, k)
	}
	slices.Sort(known)
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return " (known keys: " + strings.Join(known, ", ") + ")"
}

// distance is the Levenshtein distance, capped work for short keys.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var reTypeErr = regexp.MustCompile("^line (\\d+): cannot unmarshal (!!\\w+)(?: `([^`]*)`)? into (.+)$")

// typeErrors turns yaml.v3's type errors into path-named problems.
func (v *validator) typeErrors(err error) {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		v.add("(file)", "%s", strings.TrimPrefix(err.Error(), "yaml: "))
		return
	}
	for _, msg := range te.Errors {
		m := reTypeErr.FindStringSubmatch(msg)
		if m == nil {
			v.list = append(v.list, &FieldError{Path: "(file)", Msg: msg})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		path := v.byLine[line]
		if path == "" {
			path = "(file)"
		}
		// A duration written as a bare number, and a list or mapping where
		// the other was expected, were already reported by walk.
		if (m[4] == "time.Duration" && m[2] == "!!int") || m[2] == "!!seq" || m[2] == "!!map" {
			continue
		}
		val := m[3]
		if val == "" {
			val = strings.TrimPrefix(m[2], "!!")
		} else {
			val = strconv.Quote(val)
		}
		v.list = append(v.list, &FieldError{Path: path, Line: line, Msg: fmt.Sprintf("%s is not %s", val, friendlyType(m[4]))})
	}
}

func friendlyType(goType string) string {
	switch {
	case goType == "time.Duration":
		return "a duration like 30s, 5m or 6h"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "a mapping"
	}
	return "the expected kind of value"
}
