package ingest

import (
	"crypto/sha256"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestTokensKeepOnlyDigests: a loaded token set holds fixed-size SHA-256 digests and nothing else, so no token (or
// its length) stays in memory to leak through a dump, a %v or a timing difference of a variable-length compare.
func TestTokensKeepOnlyDigests(t *testing.T) {
	typ := reflect.TypeOf(Tokens{})
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if f.Type != reflect.TypeOf([][sha256.Size]byte(nil)) {
			t.Errorf("Tokens.%s is %s: only [][32]byte digests may be kept", f.Name, f.Type)
		}
	}
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("# comment\n  token-alpha  \n\ntoken-beta\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks.digests) != 2 || toks.digests[0] != sha256.Sum256([]byte("token-alpha")) {
		t.Fatalf("digests %x", toks.digests)
	}
	if s := fmt.Sprintf("%v %+v %#v", toks, toks, toks); strings.Contains(s, "token-") {
		t.Fatalf("printing the tokens shows one: %s", s)
	}
}

// TestTokensAllow is the behaviour of the check: every configured token opens, anything else (a prefix, an
// extension, another scheme, an empty token) does not; the scheme is case-insensitive and the token trimmed.
func TestTokensAllow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("alpha-secret\nbeta-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	for auth, want := range map[string]bool{
		"Bearer alpha-secret":     true,
		"bearer beta-secret":      true,
		"BEARER  beta-secret ":    true,
		"Bearer alpha-secre":      false,
		"Bearer alpha-secret2":    false,
		"Bearer ":                 false,
		"Bearer":                  false,
		"":                        false,
		"Basic alpha-secret":      false,
		"alpha-secret":            false,
		"Bearer gamma-secret":     false,
		"Bearer alpha-secret\x00": false,
	} {
		if got := toks.Allow(auth); got != want {
			t.Errorf("Allow(%q) = %v, want %v", auth, got, want)
		}
	}
	// A 401 never echoes what was sent.
	h := toks.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("let through") }))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/v1/events", nil)
	req.Header.Set("Authorization", "Bearer alpha-secreX")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized || strings.Contains(rec.Body.String(), "secre") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

// TestAllowComparesInConstantTime checks the code path of Allow, not its timing (which a test cannot measure
// reliably): the presented token is hashed to a fixed length, and the loop over the configured digests compares
// each with subtle.ConstantTimeCompare, with no early exit (return, break) and no ==, bytes.Equal or strings
// comparison on secrets, so the time taken does not depend on which token matched or how much of one did.
func TestAllowComparesInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "auth.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var allow *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "Allow" {
			allow = fd
		}
	}
	if allow == nil {
		t.Fatal("no Allow in auth.go")
	}
	isCall := func(n ast.Node, pkg, name string) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return false
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return false
		}
		id, ok := sel.X.(*ast.Ident)
		return ok && id.Name == pkg && sel.Sel.Name == name
	}
	var hashed, loops, compares int
	ast.Inspect(allow.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			switch {
			case isCall(n, "sha256", "Sum256"):
				hashed++
			case isCall(n, "bytes", "Equal"), isCall(n, "bytes", "Compare"), isCall(n, "strings", "Compare"),
				isCall(n, "reflect", "DeepEqual"):
				t.Errorf("%s: %s compares in variable time", fset.Position(n.Pos()), callName(n))
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				for _, side := range []ast.Expr{n.X, n.Y} {
					if mentionsSecret(side) {
						t.Errorf("%s: == on a token or digest", fset.Position(n.Pos()))
					}
				}
			}
		case *ast.RangeStmt:
			loops++
			ast.Inspect(n.Body, func(m ast.Node) bool {
				switch m := m.(type) {
				case *ast.ReturnStmt:
					t.Errorf("%s: return inside the comparison loop: an early exit tells which token matched", fset.Position(m.Pos()))
				case *ast.BranchStmt:
					t.Errorf("%s: %s inside the comparison loop", fset.Position(m.Pos()), m.Tok)
				case *ast.IfStmt:
					t.Errorf("%s: a branch inside the comparison loop", fset.Position(m.Pos()))
				}
				if isCall(m, "subtle", "ConstantTimeCompare") {
					compares++
				}
				return true
			})
		}
		return true
	})
	if hashed != 1 || loops != 1 || compares != 1 {
		t.Fatalf("Allow: %d sha256.Sum256 (want 1), %d loops (want 1), %d subtle.ConstantTimeCompare in the loop (want 1)", hashed, loops, compares)
	}
}

func mentionsSecret(e ast.Expr) bool {
	found := false
	ast.Inspect(e, func(n ast.Node) bool {
		if id, ok := n.(*ast.Ident); ok && (id.Name == "got" || id.Name == "digests") {
			found = true
		}
		return true
	})
	return found
}

func callName(n ast.Node) string {
	if call, ok := n.(*ast.CallExpr); ok {
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
			if id, ok := sel.X.(*ast.Ident); ok {
				return id.Name + "." + sel.Sel.Name
			}
		}
	}
	return "a call"
}
