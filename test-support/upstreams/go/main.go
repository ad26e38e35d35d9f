// Command upstream is openclaw's adversarial test upstream: an HTTPS server
// whose reading of each request comes from real server-side parsers (Go's
// encoding/json into structs, net/url and mime/multipart forms) and from
// emulations of other servers' documented rules (PHP's, Rack 2's, Node
// qs's, Spring's binder's and ASP.NET's model-prefix form-name readings, the query and the body
// merged into one set of parameters, framework routing styles, method
// overrides). It logs what it read, one JSON line per request, so a test
// can compare it with the proxy's decision receipt.
//
// Routes (on every host it has a certificate for):
//
//	/store/KEY    PUT/POST stores the body; GET returns it as stored
//	/reflect      answers with the request body (or ?key= a stored value),
//	              ?encoding=gzip|deflate, ?header=Name:Value, ?trailer=Name:Value
//	anything else answers with its reading (the log line) as JSON
//
// A reading's "overrides" names the method each emulated framework that
// honours method overrides would run instead of the request line's.
//
// Flags: -listen, -cert, -key, -log; -orbits prints Unicode simple case
// folding orbits (unicode.SimpleFold) as JSON and exits.
package main

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"unicode"
)

// Recipients is a mail field written as "a@x, b@y" or ["a@x", "b@y"].
type Recipients []string

// UnmarshalJSON accepts a string (split at commas) or a list of strings.
func (r *Recipients) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*r = splitList([]string{one})
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*r = splitList(many)
	return nil
}

func splitList(values []string) []string {
	out := []string{}
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// Fields is every fact the test catalogs read, as a Go service binds them:
// encoding/json matches member names case-insensitively (exact match
// first), and the last of several wins.
type Fields struct {
	Total       json.Number `json:"total"`
	Amount      json.Number `json:"amount"`
	AmountCents json.Number `json:"amount_cents"`
	Currency    string      `json:"currency"`
	Merchant    string      `json:"merchant"`
	To          Recipients  `json:"to"`
	Cc          Recipients  `json:"cc"`
	Bcc         Recipients  `json:"bcc"`
	Subject     string      `json:"subject"`
	Username    string      `json:"username"`
	Password    string      `json:"password"`
	CardNumber  string      `json:"card_number"`
	Model       string      `json:"model"`
	MaxTokens   json.Number `json:"max_tokens"`
	Payment     *Fields     `json:"payment"`
}

// facts is a reading's facts with numbers as exact text, plus "_in_cents"
// companions computed with big.Rat (absent when not a whole number of
// cents). Empty fields are left out.
type facts map[string]interface{}

func cents(n string) (string, bool) {
	r, ok := new(big.Rat).SetString(n)
	if !ok {
		return "", false
	}
	r.Mul(r, big.NewRat(100, 1))
	if !r.IsInt() {
		return "", false
	}
	return r.Num().String(), true
}

// number records a number's text and, when it is exact, its value in
// cents: `major` amounts (dollars) are scaled by 100, minor ones must be
// whole.
func (f facts) number(name, text string, major bool) {
	if text == "" {
		return
	}
	f[name] = text
	if major {
		if c, ok := cents(text); ok {
			f[name+"_in_cents"] = c
		}
	} else if r, ok := new(big.Rat).SetString(text); ok && r.IsInt() {
		f[name+"_in_cents"] = r.Num().String()
	}
}

func (f facts) text(name, v string) {
	if v != "" {
		f[name] = v
	}
}

func (f facts) list(name string, v []string) {
	if len(v) > 0 {
		f[name] = v
	}
}

func fieldFacts(v *Fields) facts {
	f := facts{}
	f.number("total", string(v.Total), true)
	f.number("amount", string(v.Amount), true)
	f.number("amount_cents", string(v.AmountCents), false)
	f.text("currency", v.Currency)
	f.text("merchant", v.Merchant)
	f.list("to", v.To)
	f.list("cc", v.Cc)
	f.list("bcc", v.Bcc)
	f.text("subject", v.Subject)
	f.text("username", v.Username)
	f.text("password", v.Password)
	f.text("card_number", v.CardNumber)
	f.text("model", v.Model)
	f.number("max_tokens", string(v.MaxTokens), false)
	if v.Payment != nil {
		f["payment"] = fieldFacts(v.Payment)
	}
	return f
}

// goFormFacts binds a form as a Go handler using r.FormValue would: exact
// names, the first value of a scalar, every value of a list.
func goFormFacts(v url.Values) facts {
	f := facts{}
	f.number("total", v.Get("total"), true)
	f.number("amount", v.Get("amount"), true)
	f.number("amount_cents", v.Get("amount_cents"), false)
	for _, name := range []string{"currency", "merchant", "subject", "username", "password", "card_number", "model"} {
		f.text(name, v.Get(name))
	}
	for _, name := range []string{"to", "cc", "bcc"} {
		f.list(name, splitList(v[name]))
	}
	return f
}

// merged reads facts as a handler given the query and the body as one set
// of parameters does: `first` wins a field both sides have, and a field only
// one side has is read from that side.
func merged(first, second facts) facts {
	out := facts{}
	for k, v := range second {
		out[k] = v
	}
	for k, v := range first {
		if strings.HasSuffix(k, "_in_cents") {
			continue
		}
		out[k] = v
		delete(out, k+"_in_cents")
		if c, ok := first[k+"_in_cents"]; ok {
			out[k+"_in_cents"] = c
		}
	}
	return out
}

// phpName rewrites a form name as PHP's php_register_variable_ex does:
// cut at a NUL, leading spaces dropped, '.' and ' ' before the first '[' become '_', a
// '[' with no ']' becomes '_'. It returns the base name and the index (nil
// for a plain name, "" for name[]).
func phpName(name string) (string, *string) {
	// PHP registers the decoded name as a C string: a NUL ends it.
	if nul := strings.IndexByte(name, 0); nul >= 0 {
		name = name[:nul]
	}
	name = strings.TrimLeft(name, " ")
	open := strings.IndexByte(name, '[')
	base := name
	if open >= 0 {
		base = name[:open]
	}
	base = strings.NewReplacer(".", "_", " ", "_").Replace(base)
	if open < 0 {
		return base, nil
	}
	rest := name[open+1:]
	close := strings.IndexByte(rest, ']')
	if close < 0 {
		return base + "_" + rest, nil
	}
	index := rest[:close]
	return base, &index
}

// rackKey is Rack 2's name pattern (normalize_params, Rails before Rack 3).
var rackKey = regexp.MustCompile(`\A[\[\]]*([^\[\]]+)\]*`)

// rackName splits a form name as Rack 2 does: '[' and ']' before the name
// and ']' after it dropped (`[amount]`, `]amount`, `amount]` are
// `amount`); then "[]" makes an item, anything else a key.
func rackName(name string) (string, *string) {
	m := rackKey.FindStringSubmatchIndex(name)
	if m == nil {
		return "", nil
	}
	k, after := name[m[2]:m[3]], name[m[1]:]
	switch {
	case after == "":
		return k, nil
	case after == "[":
		return name, nil
	case strings.HasPrefix(after, "[]"):
		index := ""
		return k, &index
	default:
		index := strings.TrimLeft(after, "[]")
		if end := strings.IndexAny(index, "[]"); end >= 0 {
			index = index[:end]
		}
		return k, &index
	}
}

// rackPairs splits an urlencoded text as Rack 2 does: at '&' and ';',
// spaces after a separator dropped.
func rackPairs(s string) [][2]string {
	var out [][2]string
	for _, kv := range regexp.MustCompile(`[&;] *`).Split(s, -1) {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, [2]string{phpDecode(k), phpDecode(v)})
	}
	return out
}

// qsSegment is one bracketed segment as Node's qs finds them.
var qsSegment = regexp.MustCompile(`\[[^\[\]]*\]`)

// qsName splits a form name as Node's qs does (Express's extended query
// and urlencoded parsers): the text before the first "[…]" is the name,
// or with none before it the first "[…]" without its brackets (`[amount]`
// is `amount`); the next "[…]" is the index.
func qsName(name string) (string, *string) {
	segments := qsSegment.FindAllStringIndex(name, 5)
	var keys []string
	parent := name
	if len(segments) > 0 {
		parent = name[:segments[0][0]]
	}
	if parent != "" {
		keys = append(keys, parent)
	}
	for _, s := range segments {
		keys = append(keys, name[s[0]:s[1]])
	}
	clean := func(k string) string {
		if len(k) >= 2 && k[0] == '[' && k[len(k)-1] == ']' {
			return k[1 : len(k)-1]
		}
		return k
	}
	switch len(keys) {
	case 0:
		return "", nil
	case 1:
		return clean(keys[0]), nil
	}
	index := clean(keys[1])
	return clean(keys[0]), &index
}

// phpValues builds PHP's $_POST (or $_GET) from ordered pairs: a plain
// name's last value wins, name[] appends, name[k] sets a key. A value is a
// string, a list or a map.
func phpValues(pairs [][2]string) map[string]interface{} {
	return nestedValues(pairs, phpName, false)
}

// nestedValues builds a framework's parameters from ordered pairs, names
// split by `split`: name[] appends, name[k] sets a key, and a plain name
// repeated keeps the last value, or (`combine`, as qs does) all of them.
func nestedValues(pairs [][2]string, split func(string) (string, *string), combine bool) map[string]interface{} {
	out := map[string]interface{}{}
	for _, p := range pairs {
		base, index := split(p[0])
		if base == "" {
			continue
		}
		if index == nil {
			switch cur := out[base].(type) {
			case string:
				if combine {
					out[base] = []interface{}{cur, p[1]}
					continue
				}
			case []interface{}:
				if combine {
					out[base] = append(cur, p[1])
					continue
				}
			}
			out[base] = p[1]
			continue
		}
		switch cur := out[base].(type) {
		case []interface{}:
			if *index == "" {
				out[base] = append(cur, p[1])
			} else {
				out[base] = map[string]interface{}{*index: p[1]}
			}
		case map[string]interface{}:
			if *index == "" {
				cur[fmt.Sprint(len(cur))] = p[1]
			} else {
				cur[*index] = p[1]
			}
		default:
			if *index == "" {
				out[base] = []interface{}{p[1]}
			} else {
				out[base] = map[string]interface{}{*index: p[1]}
			}
		}
	}
	return out
}

// phpFacts reads facts from PHP's array the way a PHP handler would use
// them: a scalar field that is an array is reported as such (PHP's
// (string) of an array is "Array"), a list field takes every item.
func phpFacts(v map[string]interface{}) facts {
	f := facts{}
	scalar := func(name string) string {
		switch x := v[name].(type) {
		case string:
			return x
		case nil:
			return ""
		default:
			return "Array"
		}
	}
	f.number("total", scalar("total"), true)
	f.number("amount", scalar("amount"), true)
	f.number("amount_cents", scalar("amount_cents"), false)
	for _, name := range []string{"currency", "merchant", "subject", "username", "password", "card_number", "model"} {
		f.text(name, scalar(name))
	}
	for _, name := range []string{"to", "cc", "bcc"} {
		var items []string
		switch x := v[name].(type) {
		case string:
			items = []string{x}
		case []interface{}:
			for _, i := range x {
				items = append(items, fmt.Sprint(i))
			}
		case map[string]interface{}:
			for _, i := range x {
				items = append(items, fmt.Sprint(i))
			}
		}
		f.list(name, splitList(items))
	}
	return f
}

// springValues binds form values as Spring's WebDataBinder does for a
// @ModelAttribute: exact names, and `!name` (its field default prefix)
// giving `name` a value when none is sent; `_name` (its field marker)
// only resets a field that is absent, and is dropped.
func springValues(v url.Values) url.Values {
	out := url.Values{}
	for name, values := range v {
		if !strings.HasPrefix(name, "!") && !strings.HasPrefix(name, "_") {
			out[name] = values
		}
	}
	for name, values := range v {
		if field := strings.TrimPrefix(name, "!"); field != name {
			if _, sent := v[field]; !sent {
				out[field] = values
			}
		}
	}
	return out
}

// aspnetValues binds form values as ASP.NET Core binds a complex model
// parameter named `prefix`: names compared without case, jQuery-style
// `prefix[name]` read as `prefix.name`; when some name starts with the
// prefix and a dot, the model's properties are read from `prefix.name`,
// else from the bare names.
func aspnetValues(v url.Values, prefix string) url.Values {
	lower := url.Values{}
	for name, values := range v {
		n := strings.ToLower(name)
		if open := strings.IndexByte(n, '['); open > 0 && strings.HasSuffix(n, "]") {
			if index := n[open+1 : len(n)-1]; !strings.ContainsAny(index, "[]") {
				n = n[:open] + "." + index
			}
		}
		lower[n] = append(lower[n], values...)
	}
	dotted := strings.ToLower(prefix) + "."
	usePrefix := false
	for n := range lower {
		usePrefix = usePrefix || strings.HasPrefix(n, dotted)
	}
	out := url.Values{}
	for n, values := range lower {
		if usePrefix {
			if f := strings.TrimPrefix(n, dotted); f != n && !strings.Contains(f, ".") {
				out[f] = values
			}
		} else if !strings.Contains(n, ".") {
			out[n] = values
		}
	}
	return out
}

// phpDecode is PHP's urldecode: '+' is a space, %XX a byte, a '%' not
// followed by two hex digits stays as it is.
func phpDecode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// phpPairs splits an urlencoded text at '&' as PHP does.
func phpPairs(s string) [][2]string {
	var out [][2]string
	for _, kv := range strings.Split(s, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, [2]string{phpDecode(k), phpDecode(v)})
	}
	return out
}

// overrideMethod is an override's value as the frameworks take it: upper
// case, letters only (Symfony's rule; Rack and Express accept a subset).
func overrideMethod(v string) string {
	v = strings.ToUpper(strings.TrimSpace(v))
	if v == "" || strings.TrimFunc(v, func(r rune) bool { return 'A' <= r && r <= 'Z' }) != "" {
		return ""
	}
	return v
}

// inflated is the body as Express's body-parser reads it (its `inflate`
// option, on by default): decoded by its one Content-Encoding (gzip or
// deflate), at most 16 MiB. false: a coding it refuses (415) or a stream
// it cannot decode (400), so no handler runs.
func inflated(r *http.Request, body []byte) ([]byte, bool) {
	var rd io.Reader
	var err error
	switch strings.ToLower(r.Header.Get("Content-Encoding")) {
	case "", "identity":
		return body, true
	case "gzip":
		rd, err = gzip.NewReader(bytes.NewReader(body))
	case "deflate":
		rd, err = zlib.NewReader(bytes.NewReader(body))
	default:
		return nil, false
	}
	if err != nil {
		return nil, false
	}
	out, err := io.ReadAll(io.LimitReader(rd, 16<<20))
	return out, err == nil
}

// jsonMethod is a JSON object's top-level `_method` string (the last of
// several, as JSON.parse and PHP's json_decode keep), exact name.
func jsonMethod(body []byte) string {
	var members map[string]json.RawMessage
	if json.Unmarshal(body, &members) != nil {
		return ""
	}
	var v string
	if json.Unmarshal(members["_method"], &v) != nil {
		return ""
	}
	return v
}

// overrides is the method each emulated framework that honours method
// overrides on a POST would run, where it is not the request line's:
// Rack::MethodOverride (`_method` of the form, a body without a type
// included, or the header), Laravel (Symfony's header, then `_method` of
// the form (PHP's names) or of a JSON object, for a type holding /json or
// +json, then of the query), and Express with body-parser (which decodes
// gzip and deflate bodies first) and method-override reading `_method` of
// req.body.
func overrides(r *http.Request, rawQuery string, body []byte) map[string]string {
	out := map[string]string{}
	if r.Method != http.MethodPost {
		return out
	}
	header := r.Header.Get("X-HTTP-Method-Override")
	full := strings.ToLower(r.Header.Get("Content-Type"))
	ct := mediaType(full)
	if ct == "" && full != "" {
		ct, _, _ = strings.Cut(full, ";")
		ct = strings.TrimSpace(ct)
	}
	// Rack's form: names as Rack 2 reads them, the last value winning.
	form := func(b []byte) string {
		var pairs [][2]string
		switch ct {
		case "", "application/x-www-form-urlencoded":
			pairs = rackPairs(string(b))
		case "multipart/form-data":
			_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			mr := multipart.NewReader(bytes.NewReader(b), params["boundary"])
			if f, err := mr.ReadForm(1 << 20); err == nil {
				for name, values := range f.Value {
					for _, v := range values {
						pairs = append(pairs, [2]string{name, v})
					}
				}
			}
		}
		v, _ := nestedValues(pairs, rackName, false)["_method"].(string)
		return v
	}
	set := func(name, v string) {
		if m := overrideMethod(v); m != "" && m != r.Method {
			out[name] = m
		}
	}
	plain := r.Header.Get("Content-Encoding") == ""
	if header != "" {
		set("rack", header)
	} else if plain {
		set("rack", form(body))
	}
	laravel := header
	if laravel == "" && plain {
		if strings.Contains(full, "/json") || strings.Contains(full, "+json") {
			laravel = jsonMethod(body)
		} else if ct == "application/x-www-form-urlencoded" {
			if v, ok := phpValues(phpPairs(string(body)))["_method"].(string); ok {
				laravel = v
			}
		} else if ct == "multipart/form-data" {
			laravel = form(body)
		}
	}
	if laravel == "" {
		if v, ok := phpValues(phpPairs(rawQuery))["_method"].(string); ok {
			laravel = v
		}
	}
	set("laravel", laravel)
	if decoded, ok := inflated(r, body); ok {
		switch ct {
		case "application/json":
			set("express", jsonMethod(decoded))
		case "application/x-www-form-urlencoded":
			v, _ := nestedValues(phpPairs(string(decoded)), qsName, true)["_method"].(string)
			set("express", v)
		}
	}
	return out
}

// route is where one routing style sends a path.
type route struct {
	Path     string `json:"path"`
	Endpoint string `json:"endpoint"`
}

// endpoints the test catalogs name, by the name a reading reports.
var endpoints = map[string]string{
	"purchase": "/api/booking/purchase",
	"pay":      "/pay",
	"login":    "/api/auth/login",
	"send":     "/v1/send",
	"sendform": "/v1/send-form",
	"flights":  "/travel/flights",
	"charge":   "/charge",
}

// resolve drops empty segments and resolves "." and "..".
func resolve(segments []string) []string {
	out := []string{}
	for _, s := range segments {
		switch s {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	return out
}

func stripParams(s string) string {
	if i := strings.IndexByte(s, ';'); i >= 0 {
		return s[:i]
	}
	return s
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// styled routes segments: `fold` compares without case (ASP.NET), `suffix`
// lets the last segment carry a format suffix (Rails, Spring).
func styled(segments []string, fold, suffix bool) route {
	r := route{Path: "/" + strings.Join(segments, "/")}
	for name, path := range endpoints {
		want := strings.Split(strings.TrimPrefix(path, "/"), "/")
		if len(want) != len(segments) {
			continue
		}
		ok := true
		for i := range want {
			got := segments[i]
			if suffix && i == len(want)-1 {
				if dot := strings.IndexByte(got, '.'); dot > 0 {
					if got[:dot] == want[i] || fold && strings.EqualFold(got[:dot], want[i]) {
						continue
					}
				}
			}
			if got != want[i] && !(fold && strings.EqualFold(got, want[i])) {
				ok = false
				break
			}
		}
		if ok {
			r.Endpoint = name
		}
	}
	return r
}

// routes reads the raw path the ways frameworks do.
func routes(rawPath string, goPath string) map[string]route {
	split := func(s string) []string { return strings.Split(s, "/") }
	tomcat := []string{}
	for _, s := range split(rawPath) {
		tomcat = append(tomcat, unescape(stripParams(s)))
	}
	decodeFirst := []string{}
	for _, s := range split(unescape(rawPath)) {
		decodeFirst = append(decodeFirst, stripParams(s))
	}
	twice := []string{}
	for _, s := range split(unescape(unescape(rawPath))) {
		twice = append(twice, stripParams(s))
	}
	// Go's ServeMux answers an unclean path with a redirect to
	// path.Clean of it, so that is where the request ends up.
	clean := path.Clean(goPath)
	mux := route{Path: clean}
	for name, p := range endpoints {
		if clean == p {
			mux.Endpoint = name
		}
	}
	return map[string]route{
		"go_servemux":   mux,
		"tomcat_spring": styled(resolve(tomcat), false, true),
		"decode_first":  styled(resolve(decodeFirst), false, true),
		"double_decode": styled(resolve(twice), false, false),
		"aspnet":        styled(resolve(decodeFirst), true, false),
	}
}

type server struct {
	mu     sync.Mutex
	log    *os.File
	stored map[string][]byte
}

func mediaType(v string) string {
	t, _, err := mime.ParseMediaType(v)
	if err != nil {
		return ""
	}
	return t
}

func isJSONType(t string) bool {
	return t == "application/json" || t == "text/json" || strings.HasSuffix(t, "+json")
}

// reading is everything the upstream read of one request.
func (s *server) reading(r *http.Request, body []byte) map[string]interface{} {
	target := r.RequestURI
	rawPath, rawQuery, _ := strings.Cut(target, "?")
	readings := map[string]interface{}{}
	errors := map[string]string{}
	ct := mediaType(r.Header.Get("Content-Type"))

	// JSON: what a Go service decoding into a struct binds, whether or not
	// it looked at the Content-Type first.
	var f Fields
	if err := json.Unmarshal(body, &f); err == nil {
		name := "go_json_ignoring_type"
		if isJSONType(ct) {
			name = "go_json"
		}
		readings[name] = fieldFacts(&f)
	} else if isJSONType(ct) {
		errors["go_json"] = err.Error()
	}

	switch {
	case ct == "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			errors["go_form"] = err.Error()
		}
		readings["go_form"] = goFormFacts(v)
		readings["spring_form"] = goFormFacts(springValues(v))
		readings["aspnet_form"] = goFormFacts(aspnetValues(v, "model"))
		readings["php_form"] = phpFacts(phpValues(phpPairs(string(body))))
		readings["qs_form"] = phpFacts(nestedValues(phpPairs(string(body)), qsName, true))
		readings["rack_form"] = phpFacts(nestedValues(rackPairs(string(body)), rackName, false))
	case ct == "multipart/form-data":
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		if form, err := mr.ReadForm(1 << 20); err == nil {
			readings["go_multipart"] = goFormFacts(url.Values(form.Value))
			var pairs [][2]string
			for name, values := range form.Value {
				for _, v := range values {
					pairs = append(pairs, [2]string{name, v})
				}
			}
			readings["php_multipart"] = phpFacts(phpValues(pairs))
			readings["rack_multipart"] = phpFacts(nestedValues(pairs, rackName, false))
		} else {
			errors["go_multipart"] = err.Error()
		}
	}
	if v, err := url.ParseQuery(rawQuery); err == nil {
		readings["go_query"] = goFormFacts(v)
		readings["spring_query"] = goFormFacts(springValues(v))
		readings["aspnet_query"] = goFormFacts(aspnetValues(v, "model"))
	} else {
		errors["go_query"] = err.Error()
	}
	readings["php_query"] = phpFacts(phpValues(phpPairs(rawQuery)))
	readings["qs_query"] = phpFacts(nestedValues(phpPairs(rawQuery), qsName, true))
	readings["rack_query"] = phpFacts(nestedValues(rackPairs(rawQuery), rackName, false))

	// The query and the body as one set of parameters: Go's own r.Form
	// (body values first, then the query's; FormValue takes the first),
	// and emulations of servers that prefer the query's copy (Spring's
	// @RequestParam, Flask's request.values, Symfony's Request::get) or
	// the body's (Rails' params, Laravel's input, PHP's $_REQUEST).
	merge := r.Clone(r.Context())
	merge.Body = io.NopCloser(bytes.NewReader(body))
	if err := merge.ParseMultipartForm(1 << 20); err == nil || err == http.ErrNotMultipart {
		readings["go_form_value"] = goFormFacts(merge.Form)
	}
	bodyFacts := facts{}
	for _, name := range []string{"go_json", "go_form", "go_multipart"} {
		if f, ok := readings[name].(facts); ok {
			bodyFacts = f
			break
		}
	}
	// PHP's $_REQUEST under its built-in variables_order (EGPCS, what runs
	// without a php.ini, as in the official Docker images): the query's
	// pairs, then the form body's, then the cookies', a later one winning.
	requestPairs := phpPairs(rawQuery)
	if ct == "application/x-www-form-urlencoded" {
		requestPairs = append(requestPairs, phpPairs(string(body))...)
	}
	for _, header := range r.Header.Values("Cookie") {
		for _, c := range strings.Split(header, ";") {
			if name, value, ok := strings.Cut(strings.TrimLeft(c, " "), "="); ok {
				requestPairs = append(requestPairs, [2]string{phpDecode(name), phpDecode(value)})
			}
		}
	}
	readings["php_request"] = phpFacts(phpValues(requestPairs))
	queryFacts, _ := readings["go_query"].(facts)
	readings["query_first"] = merged(queryFacts, bodyFacts)
	readings["body_first"] = merged(bodyFacts, queryFacts)

	headers := map[string][]string{}
	for k, v := range r.Header {
		headers[strings.ToLower(k)] = v
	}
	return map[string]interface{}{
		"method":       r.Method,
		"host":         r.Host,
		"target":       target,
		"proto":        r.Proto,
		"content_type": r.Header.Values("Content-Type"),
		"routes":       routes(rawPath, r.URL.Path),
		"readings":     readings,
		"errors":       errors,
		"overrides":    overrides(r, rawQuery, body),
		"headers":      headers,
		"body":         string(body),
	}
}

func (s *server) record(reading map[string]interface{}) []byte {
	line, err := json.Marshal(reading)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"error":%q}`, err.Error()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		s.log.Write(append(line, '\n'))
	}
	return line
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	line := s.record(s.reading(r, body))
	switch {
	case strings.HasPrefix(r.URL.Path, "/store/"):
		key := strings.TrimPrefix(r.URL.Path, "/store/")
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.Method == http.MethodGet {
			v, ok := s.stored[key]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Write(v)
			return
		}
		s.stored[key] = body
		w.WriteHeader(http.StatusCreated)
	case r.URL.Path == "/reflect":
		s.reflect(w, r, body)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Write(line)
	}
}

// reflect answers with `body` (or a stored value), encoded and decorated
// as the query asks.
func (s *server) reflect(w http.ResponseWriter, r *http.Request, body []byte) {
	q := r.URL.Query()
	if key := q.Get("key"); key != "" {
		s.mu.Lock()
		body = s.stored[key]
		s.mu.Unlock()
	}
	for _, h := range q["header"] {
		if name, value, ok := strings.Cut(h, ":"); ok {
			w.Header().Add(name, value)
		}
	}
	var trailers [][2]string
	for _, t := range q["trailer"] {
		if name, value, ok := strings.Cut(t, ":"); ok {
			w.Header().Add("Trailer", name)
			trailers = append(trailers, [2]string{name, value})
		}
	}
	var out bytes.Buffer
	switch q.Get("encoding") {
	case "gzip":
		zw := gzip.NewWriter(&out)
		zw.Write(body)
		zw.Close()
		w.Header().Set("Content-Encoding", "gzip")
	case "deflate":
		zw, _ := flate.NewWriter(&out, flate.DefaultCompression)
		zw.Write(body)
		zw.Close()
		w.Header().Set("Content-Encoding", "deflate")
	default:
		out.Write(body)
	}
	w.Write(out.Bytes())
	for _, t := range trailers {
		w.Header().Set(t[0], t[1])
	}
}

// orbits lists every Unicode simple case folding orbit with more than one
// member, each from its smallest rune.
func orbits() [][]string {
	var out [][]string
	for r := rune(0); r <= unicode.MaxRune; r++ {
		next := unicode.SimpleFold(r)
		if next == r {
			continue
		}
		smallest := true
		orbit := []string{string(r)}
		for c := next; c != r; c = unicode.SimpleFold(c) {
			if c < r {
				smallest = false
				break
			}
			orbit = append(orbit, string(c))
		}
		if smallest {
			out = append(out, orbit)
		}
	}
	return out
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	cert := flag.String("cert", "", "certificate chain (PEM)")
	key := flag.String("key", "", "private key (PEM)")
	logPath := flag.String("log", "", "append one JSON line per request here")
	printOrbits := flag.Bool("orbits", false, "print Unicode simple folding orbits as JSON and exit")
	flag.Parse()
	if *printOrbits {
		json.NewEncoder(os.Stdout).Encode(orbits())
		return
	}
	s := &server{stored: map[string][]byte{}}
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			log.Fatal(err)
		}
		s.log = f
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	srv := &http.Server{Handler: s, ErrorLog: log.New(io.Discard, "", 0)}
	log.Fatal(srv.ServeTLS(ln, *cert, *key))
}
