package clientimg

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
)

const (
	testAccount = "123456789012"
	testRole    = "e2e-role"
	credsPrefix = "/latest/meta-data/iam/security-credentials/"
)

// fakeIMDS is a strict IMDSv2 stand-in: every credential path needs a token
// it minted, X-Forwarded-For is refused, and each credential GET issues a
// fresh key from the fakeaws Store (so STS can verify what the SDK signs
// with). It counts what the SDKs did.
type fakeIMDS struct {
	store *fakeaws.Store
	life  time.Duration

	mu          sync.Mutex
	tokens      map[string]time.Time
	ttls        []int // TTLs asked for in token PUTs, in order
	listGETs    int   // GET of the role list
	credGETs    int   // GET of the role's credentials (one key issued each)
	tokenless   int   // credential-path requests rejected for a missing/bad token
	xff         int   // requests rejected for X-Forwarded-For
	lastExpires time.Time
	issuedKeys  []string
}

func newFakeIMDS(store *fakeaws.Store, life time.Duration) *fakeIMDS {
	return &fakeIMDS{store: store, life: life, tokens: map[string]time.Time{}}
}

type imdsCounts struct {
	TTLs               []int
	ListGETs, CredGETs int
	Tokenless, XFF     int
	LastExpires        time.Time
	IssuedKeys         []string
}

func (f *fakeIMDS) counts() imdsCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return imdsCounts{
		TTLs: append([]int(nil), f.ttls...), ListGETs: f.listGETs, CredGETs: f.credGETs,
		Tokenless: f.tokenless, XFF: f.xff, LastExpires: f.lastExpires,
		IssuedKeys: append([]string(nil), f.issuedKeys...),
	}
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Forwarded-For") != "" {
		f.mu.Lock()
		f.xff++
		f.mu.Unlock()
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if r.URL.Path == "/latest/api/token" {
		f.token(w, r)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !strings.HasPrefix(r.URL.Path, credsPrefix) {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.tokens[r.Header.Get("X-Aws-Ec2-Metadata-Token")]
	if !ok || time.Now().After(exp) {
		f.tokenless++
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	switch strings.TrimPrefix(r.URL.Path, credsPrefix) {
	case "":
		f.listGETs++
		_, _ = w.Write([]byte(testRole))
	case testRole:
		f.credGETs++
		is := f.store.Issue(testAccount, "arn:aws:iam::"+testAccount+":role/"+testRole,
			"arn:aws:sts::"+testAccount+":assumed-role/"+testRole+"/clientimg-test", f.life, true)
		f.lastExpires = is.Expiration
		f.issuedKeys = append(f.issuedKeys, is.AccessKeyID)
		now := time.Now().UTC().Format(time.RFC3339)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"Code": "Success", "LastUpdated": now, "Type": "AWS-HMAC",
			"AccessKeyId": is.AccessKeyID, "SecretAccessKey": is.SecretAccessKey, "Token": is.SessionToken,
			"Expiration": is.Expiration.UTC().Format(time.RFC3339),
		})
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
	if err != nil || ttl < 1 || ttl > 21600 {
		http.Error(w, "bad ttl", http.StatusBadRequest)
		return
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	f.mu.Lock()
	f.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
	f.ttls = append(f.ttls, ttl)
	f.mu.Unlock()
	w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", strconv.Itoa(ttl))
	_, _ = w.Write([]byte(tok))
}
