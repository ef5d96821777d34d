package docker

import "strings"

// containerIDsInPath returns the container ids named by the components of a
// cgroup2 path, deepest first. Docker with runc names a container's cgroup
// "<64hex>" (cgroupfs driver, under /docker or a --cgroup-parent) or
// "docker-<64hex>.scope" (systemd driver). Processes inside a container may
// create sub-cgroups below it, and nested engines (docker-in-docker) put
// their containers below the outer one, so the caller tries the candidates
// from the deepest up and keeps the first one its own engine knows: that is
// the nearest container ancestor.
func containerIDsInPath(p string) []string {
	var ids []string
	parts := strings.Split(p, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if id, ok := containerIDOfComponent(parts[i]); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func containerIDOfComponent(c string) (string, bool) {
	if s, ok := strings.CutPrefix(c, "docker-"); ok {
		s, ok = strings.CutSuffix(s, ".scope")
		if !ok {
			return "", false
		}
		c = s
	}
	if !isContainerID(c) {
		return "", false
	}
	return c, true
}

// isContainerID reports whether s looks like a full Docker container id:
// 64 lowercase hex digits.
func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// underPath reports whether p is dir or a descendant of it.
func underPath(p, dir string) bool {
	if dir == "" {
		return false
	}
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
