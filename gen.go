// Package perdockerroles is the root of per-docker-roles, a daemon that gives
// each Docker container its own AWS IAM role through an instance-metadata
// proxy. The code lives under cmd/ and internal/ (see DESIGN.md); this file
// only carries the generator for the eBPF redirect in bpf/, whose compiled
// objects are committed under internal/redirect so a plain `go build` needs
// no clang.
package perdockerroles

// Regenerate with `go generate .` (needs clang and libbpf-dev). Little-endian
// only: the objects load on x86_64 and arm64.
//go:generate go tool bpf2go -target bpfel -output-dir internal/redirect -go-package redirect -output-stem pdr -tags linux -type pdr_config -type pdr_record -type pdr_addr -type pdr_counter -type pdr_flag -cflags "-O2 -g -Wall -Werror -Ibpf/include" pdr bpf/redirect.c
