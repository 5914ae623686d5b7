# udm — see README.md.
GO      ?= go
PKGS    := ./...
BIN     := bin/udm
# The Debian packages the tests drive and the commands they provide, as
# .ci/run reads them too.
DEBFILE := .ci/debian-packages
DEBS    := $(shell awk '!/^\#/ && NF {print $$1}' $(DEBFILE))
TOOLS   := $(shell awk '!/^\#/ && NF {for (i = 2; i <= NF; i++) print $$i}' $(DEBFILE))

.PHONY: all build install test race bench bench-go bench-uring lint run deps tools drill stress clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/udm

# install puts the binary in $(BINDIR), the systemd units in $(UNITDIR)
# (udm.service runs $(BINDIR)/udm) and the example configuration in
# $(SYSCONFDIR)/udm/udm.conf.example (udm serve reads udm.conf there), all
# under $(DESTDIR) when packaging: make install PREFIX=/usr DESTDIR=/tmp/pkg.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/udm
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' contrib/systemd/udm.service > $(DESTDIR)$(UNITDIR)/udm.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/udm.service
	install -m 0644 contrib/systemd/udm.socket $(DESTDIR)$(UNITDIR)/udm.socket
	install -D -m 0644 docs/udm.conf.example $(DESTDIR)$(SYSCONFDIR)/udm/udm.conf.example

# deps installs the Debian packages the tests drive (as root, with
# apt-get), or says what to install.
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $(DEBS) >/dev/null && echo "deps: installed $(DEBS)"; \
	else \
		echo "deps: run as root: apt-get install -y $(DEBS)"; exit 1; \
	fi

# tools checks that the commands the tests drive are installed (it
# installs nothing: that is make deps).
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing; install them with make deps (as root) or apt-get install -y $(DEBS)"; exit 1; \
	fi

test: tools build
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)
	$(GO) test -count=1 -race -timeout 15m $(RACEPKGS)
	@$(MAKE) --no-print-directory fuzz-short

# The daemon and drills run race-built subprocesses (minutes): make race has them.
RACEPKGS ?= ./uring/ ./dm/... ./multipath/ ./nbd/... ./perf/

race:
	$(GO) test -count=1 -race -timeout 20m $(PKGS)

# fuzz-short runs each fuzz target for FUZZEXECS executions: bounded by
# work, not by time (a time bound races the fuzz coordinator on a loaded
# machine and fails with "context deadline exceeded", golang/go#75804).
FUZZEXECS ?= 2000
fuzz-short:
	@for spec in $$($(GO) run ./internal/tools/listfuzz 2>/dev/null); do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZEXECS) executions)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZEXECS)x $$pkg || exit 1; \
	done

# bench-go: the hot-path Go benchmarks, in benchstat's format (also in
# perf/results/bench-go.txt).
bench-go:
	@mkdir -p perf/results
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./uring/ ./dm/... ./multipath/ ./nbd/... > perf/results/bench-go.txt; \
		rc=$$?; cat perf/results/bench-go.txt; exit $$rc

# bench-uring: the loop against fio's io_uring engine on the same targets
# (the table on stdout; the raw report in perf/out/report-uring.json,
# which git ignores).
bench-uring: build
	$(BIN) bench matrix --suite uring --reps 3 --runtime 5s --out perf/out

# bench: the side-by-side run against fio (raw file and loop device),
# nbdkit and qemu-nbd; writes BENCHMARKS.md and its plots
# (perf/results/*.svg); the raw report goes to perf/out/report.json,
# which git ignores.
BENCHFLAGS ?= --reps 3 --runtime 5s --ramp 1s
bench: build
	$(BIN) bench matrix --suite full $(BENCHFLAGS) --md BENCHMARKS.md --out perf/out --plots perf/results
	$(MAKE) --no-print-directory bench-uring
	$(MAKE) --no-print-directory bench-go

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null 2>&1 || $(GO) install honnef.co/go/tools/cmd/staticcheck@latest >/dev/null 2>&1; then \
		PATH=$$PATH:$$($(GO) env GOPATH)/bin staticcheck $(PKGS); \
	else echo "lint: staticcheck not installable here; skipped"; fi

run: build
	$(BIN) serve

# drill: the full form of every failover drill (udm drill --list) with
# perf's verified workload, then those fio can run with fio's; reports
# go to drill/reports/: NAME.txt and NAME.svg (the samples the README
# links) and NAME.json (the raw record, which git ignores). The remote drill
# needs root and network namespaces (it says so and is skipped without).
DRILLFLAGS ?=
drill: build
	$(BIN) drill --all --full --quiet --out drill/reports $(DRILLFLAGS)
	$(BIN) drill --all --full --quiet --fio --out drill/reports/fio $(DRILLFLAGS)
	$(BIN) drill real-fs --full --quiet

# stress: the long form of the control-plane torture test (stress/):
# parallel workers change devices under NBD clients doing verified I/O
# while the daemon is killed and restarted; STRESSOPS operations, and
# -stress.seed=N in STRESSFLAGS replays a run. make test runs its short
# form.
STRESSOPS   ?= 20000
STRESSFLAGS ?=
stress:
	$(GO) test -count=1 -run '^TestTorture$$' -timeout 60m -v ./stress/ -args -stress.ops=$(STRESSOPS) $(STRESSFLAGS)

clean:
	rm -rf bin perf/out
