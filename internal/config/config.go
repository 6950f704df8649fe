// Package config loads veloced's configuration file into its flag.FlagSet,
// so that the file can say everything the flags say and new flags need no
// code here.
//
// The file is TOML (default DefaultPath). Every key is top level and is the
// name of a flag, without dashes; its value has the flag's type:
//
//	listen     = "10.0.0.1:7078"                     # a string flag
//	queues     = 2                                   # a number
//	peer       = ["10.0.0.2:7078", "10.0.0.3:7078"]  # a repeatable flag: an array
//	vhost-user = ["/run/veloce/vm0.sock"]
//
// A boolean flag takes true or false, a number flag an integer (a float
// flag also a float), a duration flag a string such as "10s", and any other
// flag a string. A repeatable flag is one whose flag.Value implements
// flag.Getter with Get returning []string; it takes an array of strings
// (or one string), each element set in turn as if the flag were repeated.
//
// Flags given on the command line win: Parse parses the command line
// first, then sets from the file only the flags the command line did not
// set (for a repeatable flag, the command line's values replace the
// file's). An unknown key, a table, a value of the wrong type or one the
// flag refuses is an error naming the file, the line and the key:
//
//	/etc/veloce/veloced.toml:7: queues: want an integer, have string "two"
//
// Plug it in by replacing fs.Parse(args) with New(fs, path).Parse(args);
// Print writes the effective configuration back as TOML (--print-config).
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where veloced looks for its configuration file when
// --config is not given. A missing file there is not an error.
const DefaultPath = "/etc/veloce/veloced.toml"

// The flags Config adds to the FlagSet.
const (
	// FlagConfig names the configuration file.
	FlagConfig = "config"
	// FlagPrintConfig asks for the effective configuration on stdout.
	FlagPrintConfig = "print-config"
)

// Config is a FlagSet with a configuration file. Create it with New.
type Config struct {
	fs          *flag.FlagSet
	path        *string
	print       *bool
	loaded      string         // the file applied; empty if none
	lines       map[string]int // flag name -> line of the file that set it
	fromFile    map[string]bool
	defaultPath string
}

// New adds --config (default defaultPath; empty: no default file) and
// --print-config to fs. Call it after defining every other flag.
func New(fs *flag.FlagSet, defaultPath string) *Config {
	c := &Config{fs: fs, defaultPath: defaultPath, lines: map[string]int{}, fromFile: map[string]bool{}}
	c.path = fs.String(FlagConfig, defaultPath, "configuration file (TOML; each key a flag's name); flags on the command line override it. A missing default file is ignored")
	c.print = fs.Bool(FlagPrintConfig, false, "print the effective configuration (the file and the flags) as TOML and exit")
	return c
}

// Parse parses args with the FlagSet, then applies the configuration file
// to every flag args did not set. It returns the FlagSet's errors
// (flag.ErrHelp included), an error for a --config file that cannot be
// read (a missing default file is skipped), and a *KeyError or a
// toml.ParseError for the file's contents.
func (c *Config) Parse(args []string) error {
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	explicit := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	path := *c.path
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !explicit[FlagConfig] && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("--%s: %w", FlagConfig, err)
	}
	if err := c.apply(path, data, explicit); err != nil {
		return err
	}
	c.loaded = path
	return nil
}

// Printing reports whether --print-config was given.
func (c *Config) Printing() bool { return *c.print }

// Loaded returns the path of the configuration file applied, or "" if
// none was.
func (c *Config) Loaded() string { return c.loaded }

// KeyError is an error about one key of a configuration file.
type KeyError struct {
	// Path is the file's path.
	Path string
	// Line is the key's line, from 1; 0 if it could not be found.
	Line int
	// Key is the key as written (a flag's name, for a valid key).
	Key string
	// Err says what is wrong.
	Err error
}

func (e *KeyError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s: %v", e.Path, e.Key, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s: %v", e.Path, e.Line, e.Key, e.Err)
}

func (e *KeyError) Unwrap() error { return e.Err }

// ErrUnknownKey: a key that is no flag's name.
var ErrUnknownKey = errors.New("no such flag")

// ErrType: a value of the wrong TOML type for its flag.
var ErrType = errors.New("wrong type")

func (c *Config) apply(path string, data []byte, explicit map[string]bool) error {
	var values map[string]any
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&values)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		name := k[0] // a table's keys, or a dotted key, fail on their top
		if seen[name] {
			continue
		}
		seen[name] = true
		line := lineOf(data, name)
		kerr := func(format string, args ...any) error {
			return &KeyError{Path: path, Line: line, Key: name, Err: fmt.Errorf(format, args...)}
		}
		f := c.fs.Lookup(name)
		v := values[name]
		if _, table := v.(map[string]any); table {
			return kerr("%w: tables are not flags; write every key at the top level", ErrUnknownKey)
		}
		switch {
		case f == nil:
			return kerr("%w (see veloced --help; keys are flag names without dashes)", ErrUnknownKey)
		case name == FlagConfig || name == FlagPrintConfig || name == "help" || name == "h":
			return kerr("%w: --%s cannot be set in the configuration file", ErrUnknownKey, name)
		}
		c.lines[name] = line
		if explicit[name] {
			continue // the command line wins
		}
		strs, err := flagStrings(f, v)
		if err != nil {
			return kerr("%w", err)
		}
		for _, s := range strs {
			if err := c.fs.Set(name, s); err != nil {
				return kerr("invalid value %q: %w", s, err)
			}
		}
		c.fromFile[name] = true
	}
	return nil
}

// flagStrings converts a TOML value to the strings to Set f to, checking
// its type against the flag's.
func flagStrings(f *flag.Flag, v any) ([]string, error) {
	var want any // a value of the flag's type; nil: any string
	if g, ok := f.Value.(flag.Getter); ok {
		want = g.Get()
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		want = true
	}
	switch want.(type) {
	case bool:
		if b, ok := v.(bool); ok {
			return []string{strconv.FormatBool(b)}, nil
		}
		return nil, typeErr("true or false", v)
	case int, int64, uint, uint64:
		if i, ok := v.(int64); ok {
			return []string{strconv.FormatInt(i, 10)}, nil
		}
		return nil, typeErr("an integer", v)
	case float64:
		switch n := v.(type) {
		case int64:
			return []string{strconv.FormatInt(n, 10)}, nil
		case float64:
			return []string{strconv.FormatFloat(n, 'g', -1, 64)}, nil
		}
		return nil, typeErr("a number", v)
	case time.Duration:
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, typeErr(`a duration string such as "10s"`, v)
	case []string:
		switch a := v.(type) {
		case string:
			return []string{a}, nil
		case []any:
			out := make([]string, len(a))
			for i, e := range a {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("element %d: %w", i, typeErr("a string", e))
				}
				out[i] = s
			}
			return out, nil
		}
		return nil, typeErr("an array of strings", v)
	default: // string flags and custom values
		if s, ok := v.(string); ok {
			return []string{s}, nil
		}
		return nil, typeErr("a string", v)
	}
}

func typeErr(want string, v any) error {
	return fmt.Errorf("%w: want %s, have %s", ErrType, want, describe(v))
}

func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %g", v)
	case bool:
		return fmt.Sprintf("boolean %t", v)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

// lineOf finds the line (from 1) where the top-level key name is assigned
// or opens a table; 0 if it cannot. BurntSushi/toml records key positions
// but does not export them, so this scans the text.
func lineOf(data []byte, name string) int {
	q := regexp.QuoteMeta(name)
	re := regexp.MustCompile(`^\s*(?:\[+\s*)?(?:` + q + `|"` + q + `"|'` + q + `')\s*[=.\]]`)
	for i, l := range strings.Split(string(data), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

// Annotate adds to err, when it is about a flag set from the file (its
// message starts with "--NAME" as veloced's validation errors do), the
// file and line that set it:
//
//	/etc/veloce/veloced.toml:3: service-ip: --service-ip: ParseAddr(...): ...
//
// Other errors, and nil, come back unchanged. Use it on the error of
// the checks that follow Parse.
func (c *Config) Annotate(err error) error {
	if err == nil || c.loaded == "" {
		return err
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "--") {
		return err
	}
	name := msg[2:]
	if i := strings.IndexAny(name, ": ="); i >= 0 {
		name = name[:i]
	}
	if !c.fromFile[name] {
		return err
	}
	return &KeyError{Path: c.loaded, Line: c.lines[name], Key: name, Err: err}
}

// Print writes the effective configuration, every flag but --config,
// --print-config and --help with its current value, as TOML that Parse
// reads back: each key preceded by its usage as a comment.
func (c *Config) Print(w io.Writer) error {
	var flags []*flag.Flag
	c.fs.VisitAll(func(f *flag.Flag) {
		if f.Name != FlagConfig && f.Name != FlagPrintConfig {
			flags = append(flags, f)
		}
	})
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	var b strings.Builder
	b.WriteString("# veloced configuration (veloced --print-config)")
	if c.loaded != "" {
		fmt.Fprintf(&b, "; from %s and the command line", c.loaded)
	}
	b.WriteString("\n")
	for _, f := range flags {
		b.WriteString("\n")
		for _, l := range wrap(f.Usage, 76) {
			fmt.Fprintf(&b, "# %s\n", l)
		}
		fmt.Fprintf(&b, "%s = %s\n", f.Name, Value(f))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Value returns f's current value as a TOML value of the type the file
// takes for f.
func Value(f *flag.Flag) string {
	var v any = f.Value.String()
	if g, ok := f.Value.(flag.Getter); ok {
		v = g.Get()
	}
	switch v := v.(type) {
	case bool:
		return strconv.FormatBool(v)
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint:
		return strconv.FormatUint(uint64(v), 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float64:
		s := strconv.FormatFloat(v, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eEn") {
			s += ".0"
		}
		return s
	case time.Duration:
		return quote(v.String())
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return quote(f.Value.String())
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func wrap(s string, width int) []string {
	var lines []string
	var cur string
	for _, w := range strings.Fields(s) {
		if cur != "" && len(cur)+1+len(w) > width {
			lines = append(lines, cur)
			cur = ""
		}
		if cur != "" {
			cur += " "
		}
		cur += w
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return lines
}
