package cluster

import (
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// TOML keys are case-sensitive, but the TOML decoder matches keys to struct
// fields case-insensitively: "Memory" fills the memory field, and with both
// "memory" and "Memory" in one table one of them wins at random. So Parse
// checks every key the document defines, spelled as written
// (toml.MetaData.Keys), against the exact keys of File's toml tags.

// schema maps each table of cluster.toml, dotted ("" for the top level,
// "kernel.passthrough" for the tables of every [[kernel]]'s passthrough
// array), to its keys. It is derived from File's toml tags, so that it
// cannot drift from the structs Parse decodes into.
var schema = tableKeys(reflect.TypeFor[File]())

var (
	tomlUnmarshaler = reflect.TypeFor[toml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func tableKeys(t reflect.Type) map[string][]string {
	m := map[string][]string{}
	var walk func(table string, t reflect.Type)
	walk = func(table string, t reflect.Type) {
		m[table] = []string{}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			m[table] = append(m[table], name)
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice || ft.Kind() == reflect.Array {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !isValue(ft) {
				walk(joinKey(table, name), ft)
			}
		}
	}
	walk("", t)
	return m
}

// isValue reports whether a struct type decodes a TOML value by itself
// (Scalar) rather than being a table of keys.
func isValue(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(tomlUnmarshaler) || p.Implements(textUnmarshaler)
}

func joinKey(table, key string) string {
	if table == "" {
		return key
	}
	return table + "." + key
}

// unknownKeys returns, for each key in keys (MetaData.Keys, in document
// order) that is not exactly a key of the schema, the shortest unknown
// prefix: "kernel.Memory" for a key Memory in a [[kernel]], "clutser" for
// every key of a [clutser] table (once). A key below a value
// ("kernel.memory.x") is unknown at its first component past the value.
func unknownKeys(keys []toml.Key) []toml.Key {
	var out []toml.Key
	reported := map[string]bool{}
	for _, k := range keys {
		table := ""
		for i, c := range k {
			known, isTable := schema[table]
			if isTable && slices.Contains(known, c) {
				table = joinKey(table, c)
				continue
			}
			bad := k[:i+1]
			// The same bad table again through a key below it is reported
			// once; the same bad key again (in another [[kernel]]) is
			// another mistake on another line.
			if i < len(k)-1 && reported[bad.String()] {
				break
			}
			reported[bad.String()] = true
			out = append(out, slices.Clone(bad))
			break
		}
	}
	return out
}

// unknownKeyErrors describes each unknown key with its line, when it can
// be found, and the closest known key.
func unknownKeyErrors(data []byte, keys []toml.Key) []error {
	lines := keyLines(data)
	seen := map[string]int{}
	var errs []error
	var msgs []string
	for _, k := range keys {
		s := k.String()
		where := ""
		if n := lineOf(lines, k, seen[s]); n > 0 {
			where = fmt.Sprintf("line %d: ", n)
		}
		seen[s]++
		msg := fmt.Sprintf("%sunknown key %q%s", where, s, suggest(k))
		if slices.Contains(msgs, msg) {
			continue
		}
		msgs = append(msgs, msg)
		errs = append(errs, fmt.Errorf("%w: %s", ErrParse, msg))
	}
	return errs
}

func suggest(k toml.Key) string {
	if len(k) == 0 {
		return ""
	}
	table := strings.Join(k[:len(k)-1], ".")
	known, ok := schema[table]
	if !ok {
		if len(k) > 1 {
			return fmt.Sprintf(" (%s is a value, not a table)", table)
		}
		return ""
	}
	last := k[len(k)-1]
	for _, c := range known {
		if strings.EqualFold(last, c) {
			return fmt.Sprintf(" (did you mean %q? keys are case-sensitive)", c)
		}
	}
	best, bestD := "", 3
	for _, c := range known {
		if d := editDistance(last, c); d < bestD {
			best, bestD = c, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return fmt.Sprintf(" (known keys: %s)", strings.Join(slices.Sorted(slices.Values(known)), ", "))
}

// keyLine is where a line of the document defines a key.
type keyLine struct {
	line   int
	inline bool // the value is an inline table or array: keys below it are on this line too
}

// keyLines finds, for each key (as toml.Key.String writes it), the lines
// that introduce it, in order: a [table] or [[array]] header introduces its
// path and those of its parents not already open; a key = value line
// introduces its dotted key below the current table. The TOML decoder keeps
// key positions to itself, so this is a plain line scan; it only serves to
// point at lines in messages, and a key it cannot place gets none.
func keyLines(data []byte) map[string][]keyLine {
	out := map[string][]keyLine{}
	add := func(path []string, n int, inline bool) {
		s := toml.Key(path).String()
		out[s] = append(out[s], keyLine{n, inline})
	}
	var table []string
	inString := "" // the delimiter of the multi-line string the scan is in
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		if inString != "" {
			if strings.Count(line, inString)%2 == 1 {
				inString = ""
			}
			continue
		}
		t := strings.TrimSpace(line)
		switch {
		case t == "" || t[0] == '#':
			continue
		case t[0] == '[':
			array := strings.HasPrefix(t, "[[")
			start := 1
			if array {
				start = 2
			}
			end := indexUnquoted(t[start:], ']')
			if end < 0 {
				table = nil
				continue
			}
			path := parseDottedKey(t[start : start+end])
			if path == nil {
				table = nil
				continue
			}
			for j := 1; j <= len(path); j++ {
				open := j <= len(table) && slices.Equal(table[:j], path[:j])
				if !open || (array && j == len(path)) {
					add(path[:j], n, false)
				}
			}
			table = path
			continue
		}
		eq := indexUnquoted(t, '=')
		if eq < 0 {
			continue
		}
		key := parseDottedKey(t[:eq])
		if key == nil {
			continue
		}
		value := strings.TrimSpace(t[eq+1:])
		path := append(slices.Clone(table), key...)
		for j := len(table) + 1; j <= len(path); j++ {
			add(path[:j], n, j == len(path) && (strings.HasPrefix(value, "{") || strings.HasPrefix(value, "[")))
		}
		for _, delim := range []string{`"""`, `'''`} {
			if strings.Count(value, delim)%2 == 1 {
				inString = delim
			}
		}
	}
	return out
}

// lineOf is the line of the nth occurrence of key k, or of the inline
// table or array value holding it; 0 when unknown.
func lineOf(lines map[string][]keyLine, k toml.Key, nth int) int {
	if ls := lines[k.String()]; nth < len(ls) {
		return ls[nth].line
	}
	for j := len(k) - 1; j > 0; j-- {
		for _, l := range lines[k[:j].String()] {
			if l.inline {
				return l.line
			}
		}
	}
	return 0
}

// indexUnquoted is the index of the first c in s outside quotes, or -1.
func indexUnquoted(s string, c byte) int {
	var quote byte
	for i := 0; i < len(s); i++ {
		switch {
		case quote != 0:
			if s[i] == '\\' && quote == '"' {
				i++
			} else if s[i] == quote {
				quote = 0
			}
		case s[i] == '"' || s[i] == '\'':
			quote = s[i]
		case s[i] == c:
			return i
		}
	}
	return -1
}

// parseDottedKey splits a TOML key (bare, "basic" or 'literal' parts
// joined by dots) into its parts, or returns nil if s is not one.
func parseDottedKey(s string) []string {
	var parts []string
	for {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil
		}
		var part string
		switch s[0] {
		case '"':
			end := 1
			for ; end < len(s) && s[end] != '"'; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				return nil
			}
			p, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil
			}
			part, s = p, s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil
			}
			part, s = s[1:end+1], s[end+2:]
		default:
			end := strings.IndexFunc(s, func(r rune) bool { return !isBareKeyChar(r) })
			if end < 0 {
				end = len(s)
			}
			if end == 0 {
				return nil
			}
			part, s = s[:end], s[end:]
		}
		parts = append(parts, part)
		s = strings.TrimSpace(s)
		if s == "" {
			return parts
		}
		if s[0] != '.' {
			return nil
		}
		s = s[1:]
	}
}

func isBareKeyChar(r rune) bool {
	return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-'
}
