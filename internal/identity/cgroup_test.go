package identity

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/per-docker-roles/per-docker-roles/internal/docker"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

// fakeRecords is a RecordLookup that deletes on lookup, like the kernel map.
type fakeRecords struct {
	recs  map[netip.AddrPort]redirect.Record
	err   error // returned for every lookup when set
	calls int
}

func (f *fakeRecords) Lookup(peer netip.AddrPort) (redirect.Record, error) {
	f.calls++
	if f.err != nil {
		return redirect.Record{}, f.err
	}
	r, ok := f.recs[peer]
	if !ok {
		return redirect.Record{}, redirect.ErrNoRecord
	}
	delete(f.recs, peer)
	return r, nil
}

type fakeCgroupIndex struct {
	synced bool
	byCg   map[uint64]docker.Container
	err    error
}

func (f *fakeCgroupIndex) Synced() bool { return f.synced }

func (f *fakeCgroupIndex) ByCgroupID(_ context.Context, id uint64) (docker.Container, bool, error) {
	if f.err != nil {
		return docker.Container{}, false, f.err
	}
	c, ok := f.byCg[id]
	return c, ok, nil
}

func TestCgroupIdentify(t *testing.T) {
	t.Parallel()
	peer := netip.MustParseAddrPort("172.17.0.2:40000")
	hostPeer := netip.MustParseAddrPort("127.0.0.1:40001")
	nsTarget := netip.MustParseAddrPort("169.254.170.254:8080")
	hostTarget := netip.MustParseAddrPort("127.0.0.1:8080")
	web := docker.Container{ID: "aaaa", Name: "web", CgroupID: 100, Labels: map[string]string{"role": "r"}}
	hostnet := docker.Container{ID: "bbbb", Name: "hostnet", CgroupID: 200, HostNetwork: true, NetworkMode: "host"}
	imds := netip.MustParseAddrPort("169.254.169.254:80")
	errBoom := errors.New("boom")

	tests := []struct {
		name      string
		synced    bool
		recs      map[netip.AddrPort]redirect.Record
		lookupErr error
		idxErr    error
		peer      netip.AddrPort
		local     netip.AddrPort
		wantKind  Kind
		wantCg    uint64
		wantID    string
		wantErr   error // errors.Is target; nil = success
		anyErr    bool  // an error that is neither sentinel
		noLookup  bool  // the record must not be consumed
	}{
		{name: "not synced", synced: false, peer: peer, local: nsTarget,
			recs: map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, Target: nsTarget}}, wantErr: ErrNotSynced, noLookup: true},
		{name: "no record", synced: true, peer: peer, local: nsTarget, wantErr: ErrNoRecord},
		{name: "conflict", synced: true, peer: peer, local: nsTarget, lookupErr: redirect.ErrConflict, wantErr: ErrNoRecord},
		{name: "lookup failure", synced: true, peer: peer, local: nsTarget, lookupErr: errBoom, anyErr: true},
		{name: "container", synced: true, peer: peer, local: nsTarget,
			recs:     map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, OrigDst: imds, Target: nsTarget}},
			wantKind: KindContainer, wantCg: 100, wantID: "aaaa"},
		{name: "mapped peer and local", synced: true,
			peer:     netip.MustParseAddrPort("[::ffff:172.17.0.2]:40000"),
			local:    netip.MustParseAddrPort("[::ffff:169.254.170.254]:8080"),
			recs:     map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, Target: nsTarget}},
			wantKind: KindContainer, wantCg: 100, wantID: "aaaa"},
		{name: "host-network container by cgroup", synced: true, peer: hostPeer, local: hostTarget,
			recs:     map[netip.AddrPort]redirect.Record{hostPeer: {CgroupID: 200, HostNetns: true, Target: hostTarget}},
			wantKind: KindContainer, wantCg: 200, wantID: "bbbb"},
		{name: "host process", synced: true, peer: hostPeer, local: hostTarget,
			recs:     map[netip.AddrPort]redirect.Record{hostPeer: {CgroupID: 1, HostNetns: true, Target: hostTarget}},
			wantKind: KindHost, wantCg: 1},
		{name: "non-container cgroup outside the host netns is nobody", synced: true, peer: peer, local: nsTarget,
			recs:     map[netip.AddrPort]redirect.Record{peer: {CgroupID: 1, HostNetns: false, Target: nsTarget}},
			wantKind: KindUnknown, wantCg: 1},
		{name: "arrived on another proxy address", synced: true, peer: peer, local: hostTarget,
			recs:    map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, Target: nsTarget}},
			wantErr: ErrNoRecord},
		{name: "unknown local skips the target check", synced: true, peer: peer,
			recs:     map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, Target: nsTarget}},
			wantKind: KindContainer, wantCg: 100, wantID: "aaaa"},
		{name: "index error", synced: true, peer: peer, local: nsTarget, idxErr: errBoom,
			recs:   map[netip.AddrPort]redirect.Record{peer: {CgroupID: 100, Target: nsTarget}},
			anyErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recs := &fakeRecords{recs: tc.recs, err: tc.lookupErr}
			idx := &fakeCgroupIndex{synced: tc.synced, err: tc.idxErr,
				byCg: map[uint64]docker.Container{100: web, 200: hostnet}}
			got, err := NewCgroup(recs, idx).Identify(context.Background(), tc.peer, tc.local)
			if tc.noLookup && recs.calls != 0 {
				t.Errorf("record looked up (and consumed) %d times before the index synced", recs.calls)
			}
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			case tc.anyErr:
				if err == nil || errors.Is(err, ErrNoRecord) || errors.Is(err, ErrNotSynced) {
					t.Fatalf("err = %v, want a plain failure", err)
				}
				if !errors.Is(err, errBoom) {
					t.Errorf("err = %v does not wrap the cause", err)
				}
				return
			case err != nil:
				t.Fatalf("Identify: %v", err)
			}
			if got.Kind != tc.wantKind || got.CgroupID != tc.wantCg || got.Container.ID != tc.wantID {
				t.Errorf("caller = %+v, want kind %v cgroup %d container %q", got, tc.wantKind, tc.wantCg, tc.wantID)
			}
			if got.Peer != unmap(tc.peer) {
				t.Errorf("peer = %s, want %s", got.Peer, unmap(tc.peer))
			}
			if _, err := recs.Lookup(unmap(tc.peer)); !errors.Is(err, redirect.ErrNoRecord) {
				t.Errorf("record still present after Identify")
			}
		})
	}
}

// Cgroup must satisfy Strategy.
var _ Strategy = (*Cgroup)(nil)
