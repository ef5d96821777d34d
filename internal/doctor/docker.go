package doctor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"

	"github.com/per-docker-roles/per-docker-roles/internal/roles"
)

// testedAPI is the oldest Engine API the daemon was tested against
// (Docker 20.10, Debian 12).
const testedAPI = "1.41"

// dockerClient returns deps.Docker, or builds the client the daemon would.
func (s *state) dockerClient() (Docker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deps.Docker != nil {
		return s.deps.Docker, nil
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if s.cfg.DockerHost != "" {
		opts = append(opts, client.WithHost(s.cfg.DockerHost))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", s.cfg.DockerHost, err)
	}
	s.deps.Docker, s.ownDocker = cli, cli
	return cli, nil
}

func (s *state) checkDocker(ctx context.Context) Result {
	const fix = "start the engine (systemctl start docker), check --docker-host / DOCKER_HOST, and that this user may open the socket (root, or a member of the docker group)"
	cli, err := s.dockerClient()
	if err != nil {
		return Result{Status: Fail, Detail: err.Error(), Fix: "correct --docker-host (unix:///var/run/docker.sock, tcp://host:2376 ...)"}
	}
	if _, err := cli.Ping(ctx); err != nil {
		detail := fmt.Sprintf("ping %s: %v", cli.DaemonHost(), err)
		if errors.Is(err, syscall.EACCES) {
			detail += " (permission denied on the socket)"
		}
		return Result{Status: Fail, Detail: detail, Fix: fix}
	}
	v, err := cli.ServerVersion(ctx)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("version from %s: %v", cli.DaemonHost(), err), Fix: fix}
	}
	s.mu.Lock()
	s.dockerOK = true
	s.mu.Unlock()
	detail := fmt.Sprintf("%s: Docker %s, API %s (minimum %s), %s/%s", cli.DaemonHost(), v.Version, v.APIVersion, v.MinAPIVersion, v.Os, v.Arch)
	if versions.LessThan(v.APIVersion, testedAPI) {
		return Result{Status: Warn, Detail: detail,
			Fix: "untested engine: per-docker-roles is tested against API " + testedAPI + " (Docker 20.10) and newer; upgrade Docker if containers are not identified"}
	}
	return ok("%s", detail)
}

func (s *state) checkCgroupDriver(ctx context.Context) Result {
	s.mu.Lock()
	up := s.dockerOK
	s.mu.Unlock()
	if !up {
		return skip("Docker unreachable (see docker)")
	}
	cli, _ := s.dockerClient()
	info, err := cli.Info(ctx)
	if err != nil {
		return Result{Status: Fail, Detail: "info: " + err.Error(), Fix: "the engine answers ping but not /info: check dockerd's log (journalctl -u docker)"}
	}
	detail := fmt.Sprintf("%s driver, cgroup v%s, runtime %s", info.CgroupDriver, info.CgroupVersion, info.DefaultRuntime)
	switch info.CgroupDriver {
	case "cgroupfs", "systemd":
	default:
		return Result{Status: Warn, Detail: detail,
			Fix: "containers are found by their cgroup (/docker/<id> with cgroupfs, docker-<id>.scope with systemd); with this driver they may not be: set \"exec-opts\": [\"native.cgroupdriver=systemd\"] in /etc/docker/daemon.json"}
	}
	if !s.ebpf() || s.cfg.IdentityMode() != "cgroup" {
		return ok("%s", detail)
	}
	// Prove the mapping on one running container: its init process's
	// cgroup2 path must exist, because that is how a recorded cgroup id
	// becomes a container.
	list, err := cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return Result{Status: Fail, Detail: detail + "; list containers: " + err.Error(), Fix: "check dockerd's log (journalctl -u docker)"}
	}
	if len(list) == 0 {
		return ok("%s; no running container to verify the cgroup mapping with", detail)
	}
	h := s.deps.host
	mnt, err := h.cgroup2()
	if err != nil {
		return Result{Status: Warn, Detail: detail + "; cannot verify container cgroups: " + err.Error(), Fix: "see cgroup2 above"}
	}
	c := list[0]
	name := containerName(c.Names, c.ID)
	ins, err := cli.ContainerInspect(ctx, c.ID)
	if err != nil || ins.ContainerJSONBase == nil || ins.State == nil || ins.State.Pid == 0 {
		return ok("%s; container %s vanished before it could be checked (%v)", detail, name, err)
	}
	p, err := h.procCgroup(ins.State.Pid)
	if err == nil {
		_, err = h.cgroupID(filepath.Join(mnt, p))
	}
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s; container %s (pid %d) has no cgroup2 directory: %v", detail, name, ins.State.Pid, err),
			Fix: "the containers are not in the cgroup2 hierarchy the redirect sees: on a hybrid host run dockerd with cgroup v2 (systemd.unified_cgroup_hierarchy=1), or use --redirect=off --identity=ip"}
	}
	return ok("%s; container %s is at %s", detail, name, p)
}

func containerName(names []string, id string) string {
	if len(names) > 0 {
		return strings.TrimPrefix(names[0], "/")
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// refusal is one container whose label the policy refuses.
type refusal struct {
	name, state, reason string
}

func (s *state) checkLabels(ctx context.Context) Result {
	s.mu.Lock()
	up, arn, baseKnown := s.dockerOK, s.baseARN, s.base != nil
	s.mu.Unlock()
	if !up {
		return skip("Docker unreachable (see docker)")
	}
	policy, err := roles.New(roles.Config{RoleLabel: s.cfg.RoleLabel, ExternalIDLabel: s.cfg.ExternalIDLabel, Allowed: s.cfg.AllowedRoles})
	if err != nil {
		return Result{Status: Fail, Detail: err.Error(), Fix: "correct --allowed-roles / the label flags (the daemon refuses to start with them)"}
	}
	cli, _ := s.dockerClient()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", s.cfg.RoleLabel))})
	if err != nil {
		return Result{Status: Fail, Detail: "list labelled containers: " + err.Error(), Fix: "check dockerd's log (journalctl -u docker)"}
	}
	if arn == "" {
		why := "see sts"
		if !baseKnown {
			why = "see upstream"
		}
		return skip("%d container(s) labelled %s; base account unknown (%s), so their roles cannot be resolved", len(list), s.cfg.RoleLabel, why)
	}
	base, _, err := roles.ParseBaseARN(arn)
	if err != nil {
		return skip("%d container(s) labelled %s; base identity %s is not a role session", len(list), s.cfg.RoleLabel, arn)
	}
	refused := refusedContainers(policy, base, list)
	if len(refused) == 0 {
		return ok("%d labelled container(s), every label allowed (policy: %s)", len(list), policyText(s.cfg.AllowedRoles))
	}
	lines := []string{fmt.Sprintf("%d of %d labelled container(s) get no credentials (404) (policy: %s):", len(refused), len(list), policyText(s.cfg.AllowedRoles))}
	for _, r := range refused {
		lines = append(lines, fmt.Sprintf("  %s (%s): %s", r.name, r.state, r.reason))
	}
	return Result{Status: Warn, Detail: strings.Join(lines, "\n"),
		Fix: "correct the " + s.cfg.RoleLabel + " label (a role name in the base account, or a full role ARN), or widen --allowed-roles; the daemon logs \"container's role label is outside the allowed-roles policy\" for each request"}
}

func refusedContainers(p *roles.Policy, base roles.Base, list []container.Summary) []refusal {
	var out []refusal
	for _, c := range list {
		if _, err := p.Select(c.Labels, base); err != nil {
			reason := err.Error()
			switch {
			case errors.Is(err, roles.ErrNotAllowed):
				reason = "not allowed: " + reason
			case errors.Is(err, roles.ErrMalformed):
				reason = "malformed: " + reason
			}
			out = append(out, refusal{name: containerName(c.Names, c.ID), state: c.State, reason: reason})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func policyText(allowed []string) string {
	if len(allowed) == 0 {
		return "any role in the base account"
	}
	return "--allowed-roles " + strings.Join(allowed, ",")
}
