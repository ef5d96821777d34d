//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/stack"
)

// goPort is where the attacker waits for the test's go signal.
const goPort = 7777

// takeover is what one IP-takeover run observed.
type takeover struct {
	victim, attacker string // container names (= session names)
	victimIP         netip.Addr
	attackerMAC      string // from docker inspect: what the host was pinned to
	result           stack.Result
	// victimRoleCalls counts AssumeRole calls for the victim's role
	// before and after the attacker ran.
	victimRoleBefore, victimRoleAfter int
}

// An adversarial container with NET_ADMIN takes a victim container's IP
// and wins the ARP race (modelled by pinning the host's neighbour entry
// to the attacker's MAC, DESIGN.md §6). With cgroup identity it still
// gets only its own role; with IP identity it gets the victim's. The
// subtests run one stack each, in sequence: two daemons on the same
// cgroup would conflict.
func TestIPTakeover(t *testing.T) {
	e := setup(t)
	attackerImg := testenv.BuildGoImage(t, e.cli, testenv.NamePrefix+"attacker:latest", filepath.Join("clients", "attacker"))
	holderImg := testenv.HolderImage(t, e.cli)

	t.Run("cgroup identity is not fooled", func(t *testing.T) {
		s := e.start(t, stack.Config{})
		tk := takeOver(t, e, s, attackerImg, holderImg)
		first := tk.result.Lines[0]
		if got, victimARN := str(first, "arn"), assumedARN("victim-role", tk.victim); got == victimARN || str(first, "role") == "victim-role" {
			t.Fatalf("cgroup identity: the attacker holding %s received the victim's role: %v", tk.victimIP, first)
		}
		if got, want := str(first, "arn"), assumedARN("attacker-role", tk.attacker); got != want {
			t.Errorf("cgroup identity: attacker got ARN %q, want its own %q (result %v)", got, want, first)
		}
		if tk.victimRoleAfter != tk.victimRoleBefore {
			t.Errorf("AssumeRole for victim-role ran %d more times while the attacker ran (before %d, after %d)",
				tk.victimRoleAfter-tk.victimRoleBefore, tk.victimRoleBefore, tk.victimRoleAfter)
		}
		if n := s.Up.STS.RoleCalls(roleARN("attacker-role")); n < 1 {
			t.Errorf("AssumeRole for attacker-role ran %d times, want at least 1", n)
		}
	})

	t.Run("ip identity is fooled", func(t *testing.T) {
		s := e.start(t, stack.Config{IPMode: true})
		tk := takeOver(t, e, s, attackerImg, holderImg)
		first := tk.result.Lines[0]
		if got, want := str(first, "arn"), assumedARN("victim-role", tk.victim); got != want {
			t.Fatalf("IP identity: attacker holding %s got ARN %q, want the victim's %q: the takeover did not work, so this test proves nothing (result %v)",
				tk.victimIP, got, want, first)
		}
		t.Logf("IP identity handed the victim's role (%s) to a container that took its address %s with NET_ADMIN and a won ARP race: this is why cgroup identity is the default", str(first, "arn"), tk.victimIP)
	})
}

// takeOver starts a victim labelled victim-role and an attacker labelled
// attacker-role with NET_ADMIN on s's network, makes the host send the
// victim's replies to the attacker, and returns what the attacker got.
func takeOver(t *testing.T, e env, s *stack.Stack, attackerImg, holderImg string) takeover {
	t.Helper()
	tk := takeover{victim: "pdr-e2e-victim-" + shortHex(), attacker: "pdr-e2e-attacker-" + shortHex()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nw, err := e.cli.NetworkInspect(ctx, s.Network, network.InspectOptions{})
	if err != nil {
		t.Fatalf("inspect network %s: %v", s.Network, err)
	}
	bridge := "br-" + nw.ID[:12]
	if _, err := net.InterfaceByName(bridge); err != nil {
		t.Fatalf("bridge of network %s: %v", s.Network, err)
	}

	vid := testenv.RunContainer(t, e.cli, testenv.ContainerOpts{Image: holderImg, Name: tk.victim, Network: s.Network,
		Labels: map[string]string{"per-docker-roles.role": "victim-role"}})
	ep := testenv.Inspect(t, e.cli, vid).NetworkSettings.Networks[s.Network]
	if ep == nil {
		t.Fatalf("victim %s is not on network %s", tk.victim, s.Network)
	}
	if tk.victimIP, err = netip.ParseAddr(ep.IPAddress); err != nil || !tk.victimIP.Is4() {
		t.Fatalf("victim %s has no IPv4 address on %s: %q", tk.victim, s.Network, ep.IPAddress)
	}
	// The start prefetch assumes the victim's role once; wait for it so the
	// count taken next is not raced by it.
	victimARN := roleARN("victim-role")
	testenv.WaitFor(t, 20*time.Second, "prefetch of victim-role", func() bool { return s.Up.STS.RoleCalls(victimARN) >= 1 })
	tk.victimRoleBefore = s.Up.STS.RoleCalls(victimARN)

	tk.result = run(t, s, stack.Client{
		Image:   attackerImg,
		Name:    tk.attacker,
		Role:    "attacker-role",
		CapAdd:  []string{"NET_ADMIN"},
		Cmd:     []string{"-go-port", "7777", "-go-wait", "20s", tk.victimIP.String()},
		Timeout: 45 * time.Second,
		Started: func(id string) {
			ep := testenv.Inspect(t, e.cli, id).NetworkSettings.Networks[s.Network]
			if ep == nil || ep.MacAddress == "" || ep.IPAddress == "" {
				t.Fatalf("attacker %s has no endpoint on %s", tk.attacker, s.Network)
			}
			tk.attackerMAC = ep.MacAddress
			pinNeighbour(t, tk.victimIP, ep.MacAddress, bridge)
			signal(t, netip.AddrPortFrom(netip.MustParseAddr(ep.IPAddress), goPort))
		},
	})
	tk.victimRoleAfter = s.Up.STS.RoleCalls(victimARN)
	if len(tk.result.Lines) == 0 {
		t.Fatalf("attacker printed no result: exit %d, %s %s", tk.result.Exit, tk.result.Stdout, tk.result.Stderr)
	}
	first := tk.result.Lines[0]
	if tk.result.Exit == 2 {
		t.Fatalf("attacker could not take the victim's address: %v", first)
	}
	if got := str(first, "mac"); got != tk.attackerMAC {
		t.Fatalf("attacker's eth0 MAC %q is not the %q the host neighbour was pinned to", got, tk.attackerMAC)
	}
	// The takeover is real only if the proxy saw the victim's address.
	srcs, _ := first["sources"].([]any)
	if !slices.Contains(srcs, any(tk.victimIP.String())) {
		t.Fatalf("attacker's connections came from %v, not from the victim's %s: %v", srcs, tk.victimIP, first)
	}
	if n, _ := first["role_list_status"].(float64); n == 0 {
		t.Fatalf("attacker never reached the proxy from %s: %v", tk.victimIP, first)
	}
	return tk
}

// pinNeighbour makes the host send ip's packets to mac on bridge, as if
// the attacker had won the ARP race, and removes the entry in t.Cleanup.
// (Unpinned, the host here usually learns the attacker's MAC anyway, from
// the attacker's own ARP request that carries the victim's address as
// sender; the pin makes the outcome independent of that timing and of any
// entry the host already had for the victim.)
func pinNeighbour(t *testing.T, ip netip.Addr, mac, bridge string) {
	t.Helper()
	args := []string{"neigh", "replace", ip.String(), "lladdr", mac, "dev", bridge, "nud", "permanent"}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "neigh", "del", ip.String(), "dev", bridge).Run() })
	t.Logf("pinned neighbour %s lladdr %s dev %s", ip, mac, bridge)
}

// signal connects once to the attacker's go port (its own address, on
// the test's network), retrying while it starts listening.
func signal(t *testing.T, to netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp4", to.String(), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("go signal to attacker at %s: %v", to, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func shortHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
