//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/stack"
)

// subRun is what one sub-cgroup client run observed.
type subRun struct {
	res stack.Result
	// rep is the client's own report (PDR_SUBCGROUP's stderr line): the
	// sub-cgroup it ended in and the ids of that and of its container's
	// cgroup, read inside the container.
	rep struct {
		Path     string `json:"subcgroup"`
		ID       uint64 `json:"cgroup_id"`
		ParentID uint64 `json:"parent_cgroup_id"`
		Error    string `json:"error"`
	}
	// hostID is the container cgroup's id read on the host while it ran
	// (0 with hostErr set when the container was gone before the stat).
	hostID  uint64
	hostErr error
	// requests are the daemon's request log lines for this container;
	// added is its "container added" line (the index's own record).
	requests []map[string]any
	added    map[string]any
}

// A workload that manages its own cgroups (CAP_SYS_ADMIN in a private
// cgroup namespace) creates a sub-cgroup and connects from it. The
// redirect records the sub-cgroup's id, which is no container's cgroup;
// the daemon must resolve it to the nearest container ancestor and serve
// that container its own role. The negative control does the same without
// a label: identified as itself, it gets nothing (not someone else's role,
// not the host's answer).
func TestSubCgroupIdentity(t *testing.T) {
	e := setup(t)
	s := e.start(t, stack.Config{})

	t.Run("labelled container gets its own role", func(t *testing.T) {
		name := fmt.Sprintf("pdr-e2e-sub-%d", time.Now().UnixNano()%100000)
		sr := runInSubcgroup(t, s, e.goImage, name, "app-sub")
		if sr.res.Exit != 0 || len(sr.res.Lines) == 0 {
			t.Fatalf("client in a sub-cgroup failed: exit %d, %s %s", sr.res.Exit, sr.res.Stdout, sr.res.Stderr)
		}
		if got, want := str(sr.res.Lines[0], "arn"), assumedARN("app-sub", name); got != want {
			t.Errorf("client in sub-cgroup %s got ARN %q, want %q", sr.rep.Path, got, want)
		}
		for _, l := range sr.requests {
			if str(l, "role_arn") != "" && str(l, "role_arn") != roleARN("app-sub") {
				t.Errorf("request served role %s, want %s: %v", str(l, "role_arn"), roleARN("app-sub"), l)
			}
		}
		if n := s.Up.STS.RoleCalls(roleARN("app-sub")); n < 1 {
			t.Errorf("AssumeRole for app-sub ran %d times, want at least 1", n)
		}
	})

	t.Run("unlabelled container gets nothing", func(t *testing.T) {
		name := fmt.Sprintf("pdr-e2e-sub-nolabel-%d", time.Now().UnixNano()%100000)
		sr := runInSubcgroup(t, s, e.goImage, name, "")
		if sr.res.Exit != 1 || len(sr.res.Lines) == 0 || str(sr.res.Lines[0], "arn") != "" {
			t.Fatalf("unlabelled client in a sub-cgroup: exit %d (want 1: the SDK call fails), %s %s", sr.res.Exit, sr.res.Stdout, sr.res.Stderr)
		}
		refused := false
		for _, l := range sr.requests {
			if str(l, "role_arn") != "" {
				t.Errorf("unlabelled container was served role %s: %v", str(l, "role_arn"), l)
			}
			if strings.Contains(fmt.Sprint(l), "no role label") {
				refused = true
			}
		}
		if !refused {
			t.Errorf("no request line of %s says it has no role label; its lines: %v", name, sr.requests)
		}
	})
}

// runInSubcgroup runs the Go client with PDR_SUBCGROUP=worker in a private
// cgroup namespace and checks what proves the request came from the
// sub-cgroup and was attributed to the container: the client really moved
// (its report), the redirect's cgroup id on every request line is the
// sub-cgroup's, not the container's, and the index recorded the
// container's own cgroup (as read on the host, when the stat won the race
// with the container's exit).
func runInSubcgroup(t *testing.T, s *stack.Stack, image, name, role string) subRun {
	t.Helper()
	var sr subRun
	var ctDir string
	sr.res = run(t, s, stack.Client{
		Image: image, Name: name, Role: role,
		CapAdd: []string{"SYS_ADMIN"}, CgroupnsPrivate: true,
		Env: []string{"PDR_SUBCGROUP=worker"},
		Started: func(id string) {
			// The stack attaches at dockerd's cgroup subtree; with the
			// cgroupfs driver the container's cgroup is <subtree>/<id>.
			ctDir = filepath.Join(s.CgroupPath, id)
			sr.hostID, sr.hostErr = cgroup.ID(ctDir)
		},
	})
	t.Cleanup(func() { removeLeftoverCgroup(t, ctDir) })

	if err := json.Unmarshal([]byte(firstJSONLine(sr.res.Stderr)), &sr.rep); err != nil {
		t.Fatalf("client printed no sub-cgroup report on stderr (exit %d): %q", sr.res.Exit, sr.res.Stderr)
	}
	if sr.rep.Error != "" || sr.res.Exit == 3 {
		t.Fatalf("client could not enter its sub-cgroup: %s", sr.rep.Error)
	}
	if sr.rep.Path != "/worker" || sr.rep.ID == 0 || sr.rep.ParentID == 0 || sr.rep.ID == sr.rep.ParentID {
		t.Fatalf("sub-cgroup report %+v: want path /worker and two distinct non-zero ids", sr.rep)
	}
	switch {
	case sr.hostErr != nil:
		t.Logf("host-side stat of %s lost the race with the container's exit (%v); the index's record is checked instead", ctDir, sr.hostErr)
	case sr.hostID != sr.rep.ParentID:
		t.Fatalf("container cgroup %s has id %d on the host, but the client's namespace root has id %d: the client is not in a sub-cgroup of its container",
			ctDir, sr.hostID, sr.rep.ParentID)
	}

	for _, l := range s.DaemonLog() {
		if str(l, "container_id") != sr.res.ID {
			continue
		}
		if _, ok := l["status"]; ok {
			sr.requests = append(sr.requests, l)
		}
		if str(l, "msg") == "container added" {
			sr.added = l
		}
	}
	if len(sr.requests) == 0 {
		t.Fatalf("no daemon request line names container %s (%s): it was not identified as itself", name, sr.res.ID[:12])
	}
	for _, l := range sr.requests {
		got := cgID(l)
		if got != sr.rep.ID {
			t.Errorf("request line has cgroup_id %d, want the sub-cgroup's %d (container's own: %d): %v", got, sr.rep.ID, sr.rep.ParentID, l)
		}
		if str(l, "caller_kind") != "" && str(l, "caller_kind") != "container" {
			t.Errorf("request attributed to a %s, want the container: %v", str(l, "caller_kind"), l)
		}
	}
	if sr.added == nil {
		t.Errorf("no \"container added\" line for %s", sr.res.ID[:12])
	} else if got := cgID(sr.added); got != sr.rep.ParentID {
		t.Errorf("index recorded cgroup %d for %s, want the container's own %d (sub-cgroup: %d)", got, name, sr.rep.ParentID, sr.rep.ID)
	}
	t.Logf("%s: requests from sub-cgroup %s (id %d) resolved to container cgroup id %d (host stat: %d)",
		name, sr.rep.Path, sr.rep.ID, sr.rep.ParentID, sr.hostID)
	return sr
}

// cgID reads a log line's cgroup_id: JSON numbers decode as float64,
// which holds the inode numbers seen here exactly (well below 2^53).
func cgID(l map[string]any) uint64 {
	f, _ := l["cgroup_id"].(float64)
	return uint64(f)
}

func firstJSONLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "{") {
			return line
		}
	}
	return ""
}

// removeLeftoverCgroup makes sure the container's cgroup (with the child
// the client made) is gone from this shared host once the container is
// removed. The runtime normally removes both; only a leftover of our own
// container is touched.
func removeLeftoverCgroup(t *testing.T, dir string) {
	t.Helper()
	if dir == "" {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	err := errors.Join(os.Remove(filepath.Join(dir, "worker")), os.Remove(dir))
	t.Logf("container cgroup %s outlived its container; removed it ourselves: %v", dir, err)
}
