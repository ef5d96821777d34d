package imds

import (
	"strconv"
	"strings"
	"time"
)

// routeKind is one of the few paths the proxy serves; everything else is
// routeUnknown (404, never forwarded upstream).
type routeKind int

const (
	routeUnknown routeKind = iota
	routeToken
	routeRoleList // security-credentials/ and security-credentials-extended/
	routeCreds    // security-credentials/<role> and security-credentials-extended/<role>
	routeInfo
)

const (
	pathToken    = "/latest/api/token"
	pathCreds    = "/latest/meta-data/iam/security-credentials"
	pathCredsExt = "/latest/meta-data/iam/security-credentials-extended"
	pathInfo     = "/latest/meta-data/iam/info"
)

type route struct {
	kind     routeKind
	extended bool   // the -extended variant (JSON carries AccountId)
	role     string // routeCreds: the role name asked for
}

// name is the route's metrics label: a small fixed set, never the path.
func (r route) name() string {
	switch r.kind {
	case routeToken:
		return "token"
	case routeRoleList:
		if r.extended {
			return "credentials_extended_list"
		}
		return "credentials_list"
	case routeCreds:
		if r.extended {
			return "credentials_extended"
		}
		return "credentials"
	case routeInfo:
		return "info"
	default:
		return "unknown"
	}
}

// parseRoute maps a request path to a route. Every served path works with
// and without one trailing slash, as EC2's does.
func parseRoute(path string) route {
	if len(path) > 1 {
		path = strings.TrimSuffix(path, "/")
	}
	switch path {
	case pathToken:
		return route{kind: routeToken}
	case pathInfo:
		return route{kind: routeInfo}
	case pathCreds:
		return route{kind: routeRoleList}
	case pathCredsExt:
		return route{kind: routeRoleList, extended: true}
	}
	rest, ext := strings.CutPrefix(path, pathCredsExt+"/")
	if !ext {
		var ok bool
		if rest, ok = strings.CutPrefix(path, pathCreds+"/"); !ok {
			return route{}
		}
	}
	if rest == "" || strings.Contains(rest, "/") {
		return route{}
	}
	return route{kind: routeCreds, extended: ext, role: rest}
}

// parseTTL parses X-aws-ec2-metadata-token-ttl-seconds: decimal digits
// only (no sign, no spaces), 1..maxTTL.
func parseTTL(v string, maxTTL time.Duration) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(v, 10, 32) // leading zeros are fine; overflow is not
	if err != nil || n < 1 || time.Duration(n)*time.Second > maxTTL {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}
