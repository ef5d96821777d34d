package imds

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current behaviour")

// step is one request of a golden transcript.
type step struct {
	who     string        // caller (see callers) the request comes from
	advance time.Duration // fake clock moves this much first
	method  string
	path    string
	header  []string // "Name: value"; "$TOKEN" is the last token minted in this case
	want    int      // expected status, checked apart from the golden
}

const (
	tok      = "X-aws-ec2-metadata-token: $TOKEN"
	ttl21600 = "X-aws-ec2-metadata-token-ttl-seconds: 21600"
	xff      = "X-Forwarded-For: 10.0.0.1"
	pList    = "/latest/meta-data/iam/security-credentials/"
	pExt     = "/latest/meta-data/iam/security-credentials-extended/"
	pInfo    = "/latest/meta-data/iam/info"
	pToken   = "/latest/api/token"
)

func put(who string, hdr ...string) step {
	return step{who: who, method: "PUT", path: pToken, header: hdr, want: 200}
}

func get(who, path string, want int, hdr ...string) step {
	return step{who: who, method: "GET", path: path, header: hdr, want: want}
}

// mint is the usual first step: a 21600 s token for who.
func mint(who string) step { return put(who, ttl21600) }

type goldenCase struct {
	name  string
	cfg   Config
	steps []step
}

func goldenCases() []goldenCase {
	bad := func(v string) step {
		s := put("app", "X-aws-ec2-metadata-token-ttl-seconds: "+v)
		s.want = 400
		return s
	}
	xffAll := []step{}
	for _, p := range []string{pToken, pList, pList + "app-role", pExt, pExt + "app-role", pInfo, "/latest/meta-data/", "/nope"} {
		m := "GET"
		if p == pToken {
			m = "PUT"
		}
		xffAll = append(xffAll, step{who: "app", method: m, path: p, header: []string{ttl21600, xff}, want: 403})
	}
	// XFF with a valid token is still refused.
	xffAll = append([]step{mint("app")}, append(xffAll, get("app", pList+"app-role", 403, tok, xff))...)

	return []goldenCase{
		// Token endpoint.
		{name: "token_put", steps: []step{mint("app"), put("app", "X-aws-ec2-metadata-token-ttl-seconds: 1"), put("app", "X-aws-ec2-metadata-token-ttl-seconds: 300")}},
		{name: "token_put_trailing_slash", steps: []step{{who: "app", method: "PUT", path: pToken + "/", header: []string{ttl21600}, want: 200}}},
		{name: "token_bad_ttl", steps: []step{bad("0"), bad("21601"), bad("abc"), bad("-1"), bad("+5"), bad("0x10"), bad("1.5"), bad("99999999999999999999"), {who: "app", method: "PUT", path: pToken, want: 400}}},
		{name: "token_wrong_method", steps: []step{
			{who: "app", method: "GET", path: pToken, header: []string{ttl21600}, want: 405},
			{who: "app", method: "POST", path: pToken, header: []string{ttl21600}, want: 405},
			{who: "app", method: "DELETE", path: pToken + "/", want: 405},
		}},
		{name: "meta_wrong_method", steps: []step{mint("app"), {who: "app", method: "PUT", path: pList, header: []string{tok}, want: 405}, {who: "app", method: "POST", path: pList + "app-role", header: []string{tok}, want: 405}}},

		// Every path with X-Forwarded-For.
		{name: "xff_every_path", steps: xffAll},

		// The happy paths, with and without trailing slashes.
		{name: "role_list", steps: []step{mint("app"), get("app", pList, 200, tok), get("app", strings.TrimSuffix(pList, "/"), 200, tok)}},
		{name: "credentials", steps: []step{mint("app"), get("app", pList+"app-role", 200, tok), get("app", pList+"app-role/", 200, tok)}},
		{name: "credentials_head", steps: []step{mint("app"), {who: "app", method: "HEAD", path: pList + "app-role", header: []string{tok}, want: 200}}},
		{name: "extended", steps: []step{mint("app"), get("app", pExt, 200, tok), get("app", strings.TrimSuffix(pExt, "/"), 200, tok), get("app", pExt+"app-role", 200, tok), get("app", pExt+"app-role/", 200, tok)}},
		{name: "iam_info", steps: []step{mint("app"), get("app", pInfo, 200, tok), get("app", pInfo+"/", 200, tok)}},
		{name: "role_with_path", steps: []step{mint("pathrole"), get("pathrole", pList, 200, tok), get("pathrole", pList+"path-role", 200, tok), get("pathrole", pList+"team/app/path-role", 404, tok), get("pathrole", pInfo, 200, tok)}},

		// Tokens.
		{name: "imdsv1_denied", steps: []step{get("app", pList, 401), get("app", pList+"app-role", 401), get("app", pExt+"app-role", 401), get("app", pInfo, 401)}},
		{name: "imdsv1_allowed", cfg: Config{IMDSv1: true}, steps: []step{get("app", pList, 200), get("app", pList+"app-role", 200), get("app", pInfo, 200), get("app", pList, 401, "X-aws-ec2-metadata-token: not-a-token")}},
		{name: "token_invalid", steps: []step{get("app", pList, 401, "X-aws-ec2-metadata-token: not-a-token"), get("app", pList, 401, "X-aws-ec2-metadata-token: "+strings.Repeat("A", 43))}},
		{name: "token_expired", steps: []step{
			put("app", "X-aws-ec2-metadata-token-ttl-seconds: 60"),
			{who: "app", advance: 59 * time.Second, method: "GET", path: pList, header: []string{tok}, want: 200},
			{who: "app", advance: time.Second, method: "GET", path: pList, header: []string{tok}, want: 401},
			{who: "app", method: "GET", path: pList + "app-role", header: []string{tok}, want: 401},
		}},
		{name: "token_foreign", steps: []step{mint("app"), get("other", pList, 401, tok), get("other", pList+"app-role", 401, tok), get("host", pList, 401, tok), get("app", pList, 200, tok)}},

		// Who gets what.
		{name: "other_role_name", steps: []step{mint("app"), get("app", pList+"other-role", 404, tok), get("app", pExt+"other-role", 404, tok), get("app", pList+"APP-ROLE", 404, tok)}},
		{name: "other_container", steps: []step{mint("other"), get("other", pList, 200, tok), get("other", pList+"other-role", 200, tok), get("other", pList+"app-role", 404, tok)}},
		{name: "no_label", steps: []step{mint("nolabel"), get("nolabel", pList, 404, tok), get("nolabel", pList+"app-role", 404, tok), get("nolabel", pExt, 404, tok), get("nolabel", pInfo, 404, tok)}},
		{name: "not_allowed", steps: []step{mint("notallowed"), get("notallowed", pList, 404, tok), get("notallowed", pList+"elsewhere", 404, tok)}},
		{name: "malformed_label", steps: []step{mint("malformed"), get("malformed", pList, 404, tok)}},
		{name: "unknown_caller", steps: []step{mint("unknown"), get("unknown", pList, 404, tok), get("unknown", pList+"host-role", 404, tok)}},
		{name: "host_deny", steps: []step{mint("host"), get("host", pList, 404, tok), get("host", pList+"host-role", 404, tok), get("host", pInfo, 404, tok)}},
		{name: "host_base", cfg: Config{HostCallers: HostBase}, steps: []step{mint("host"), get("host", pList, 200, tok), get("host", pList+"host-role", 200, tok), get("host", pExt+"host-role", 200, tok), get("host", pInfo, 200, tok), get("host", pList+"app-role", 404, tok)}},

		// Identity failures.
		{name: "not_synced", steps: []step{{who: "notsynced", method: "PUT", path: pToken, header: []string{ttl21600}, want: 503}, get("notsynced", pList, 503), get("notsynced", pList+"app-role", 503, "X-aws-ec2-metadata-token: "+strings.Repeat("A", 43))}},
		{name: "no_record", steps: []step{
			{who: "norecord", method: "PUT", path: pToken, header: []string{ttl21600}, want: 403},
			get("norecord", pList, 403), get("norecord", pList+"app-role", 403), get("norecord", pInfo, 403),
		}},

		// Broker failures.
		{name: "sts_error", steps: []step{mint("stsdown"), get("stsdown", pList, 200, tok), get("stsdown", pList+"sts-down-role", 503, tok)}},
		{name: "upstream_error", steps: []step{mint("upstreamgone"), get("upstreamgone", pExt+"upstream-gone-role", 503, tok)}},
		{name: "broker_empty_credentials", steps: []step{mint("stale"), get("stale", pList+"stale-role", 503, tok)}},

		// Nothing else is served, and nothing is forwarded.
		{name: "unknown_paths", steps: []step{mint("app"),
			get("app", "/", 404, tok), get("app", "/latest/meta-data/", 404, tok), get("app", "/latest/meta-data/iam/", 404, tok),
			get("app", "/latest/user-data", 404, tok), get("app", "/latest/dynamic/instance-identity/document", 404, tok),
			get("app", pList+"app-role/extra", 404, tok), get("app", pList+"/", 404, tok), get("app", "//latest/api/token", 404, tok),
			get("app", "/latest/meta-data/iam/security-credentialsX", 404, tok), get("app", "/latest/api/token/x", 404, tok),
			get("app", "/nope", 404)}},
	}
}

func TestGolden(t *testing.T) {
	t.Parallel()
	for _, gc := range goldenCases() {
		t.Run(gc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOpt{cfg: gc.cfg})
			got := h.transcript(t, gc.steps)
			path := filepath.Join("testdata", gc.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/imds -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("transcript differs from %s (rerun with -update if intended):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

// keptHeaders are the response headers a transcript records: the ones
// SDKs and clients act on. Date is left out (it changes).
var keptHeaders = []string{"Allow", "Content-Length", "Content-Type", "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"}

// transcript runs steps, each on a new connection from its caller, checks
// each status, and renders request and response with tokens redacted.
func (h *harness) transcript(t *testing.T, steps []step) []byte {
	t.Helper()
	var out bytes.Buffer
	var last string // last minted token
	n := 0
	for i, s := range steps {
		h.clock.Advance(s.advance)
		var req, shown strings.Builder
		fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: 169.254.169.254\r\n", s.method, s.path)
		fmt.Fprintf(&shown, "%s %s HTTP/1.1\n", s.method, s.path)
		for _, hd := range s.header {
			fmt.Fprintf(&req, "%s\r\n", strings.ReplaceAll(hd, "$TOKEN", last))
			fmt.Fprintf(&shown, "%s\n", strings.ReplaceAll(hd, "$TOKEN", fmt.Sprintf("<token %d>", n)))
		}
		req.WriteString("\r\n")
		if s.advance != 0 {
			fmt.Fprintf(&out, "### step %d from %s after the clock moved %s\n", i+1, s.who, s.advance)
		} else {
			fmt.Fprintf(&out, "### step %d from %s\n", i+1, s.who)
		}
		out.WriteString(shown.String())
		out.WriteString("\n")

		conn := h.dial(t, s.who)
		if _, err := io.WriteString(conn, req.String()); err != nil {
			t.Fatalf("step %d: write: %v", i+1, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: s.method})
		if err != nil {
			t.Fatalf("step %d: read response: %v", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		conn.Close()
		if err != nil {
			t.Fatalf("step %d: read body: %v", i+1, err)
		}
		if resp.StatusCode != s.want {
			t.Errorf("step %d (%s %s from %s): status %d, want %d; body %q", i+1, s.method, s.path, s.who, resp.StatusCode, s.want, body)
		}
		shownBody := string(body)
		if s.path == pToken || s.path == pToken+"/" {
			if s.method == "PUT" && resp.StatusCode == 200 {
				last = string(body)
				n++
				shownBody = fmt.Sprintf("<token %d: %d bytes>", n, len(body))
			}
		}
		fmt.Fprintf(&out, "%s %s\n", resp.Proto, resp.Status)
		names := append([]string(nil), keptHeaders...)
		sort.Strings(names)
		for _, k := range names {
			if v, ok := resp.Header[k]; ok {
				fmt.Fprintf(&out, "%s: %s\n", k, strings.Join(v, ", "))
			}
		}
		// net/http moves Connection: close into resp.Close.
		if resp.Close {
			out.WriteString("Connection: close\n")
		}
		fmt.Fprintf(&out, "\n%s\n\n", shownBody)
	}
	return out.Bytes()
}
