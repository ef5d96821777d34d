// Package imds serves the IMDSv2 subset that containers' AWS SDKs use
// (DESIGN.md §2): session tokens minted here, the role list, the role's
// credentials (legacy and -extended), and iam/info. Each connection is
// identified once; every credential path needs our own token (unless
// IMDSv1 is allowed); nothing is ever forwarded upstream.
//
// Answers, checked in this order (testdata/*.golden has a transcript of
// each):
//
//	X-Forwarded-For present, any path and method        403
//	path not one of ours                                404 (never forwarded)
//	token path with a method other than PUT             405 (Allow: PUT)
//	metadata path with a method other than GET/HEAD     405
//	connection without a redirect record (ErrNoRecord)  403 for the whole connection
//	caller not identified (ErrNotSynced, timeout, ...)  503 + Connection: close
//	PUT token: TTL missing, not digits, outside 1..21600 400
//	PUT token                                           200 token, TTL echoed
//	GET: no token (IMDSv1 denied), unknown, expired,
//	     or minted for another caller                   401
//	caller with no role: no label, label malformed or
//	     outside policy, unknown caller, host under deny 404
//	base role unknown                                   503
//	security-credentials/<name> not the caller's role   404
//	broker error, or empty/expired credentials          503 with a short reason
//	otherwise                                           200
package imds
