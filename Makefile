# channelsd — see README.md. `make run` and `make test` are all a new
# machine with Go (and, for make test, a Docker engine) needs: make test
# checks the rest first and installs the missing Debian packages when it
# may (test/images/prereqs.sh).

GO        ?= go
BIN       ?= bin
# Short fuzz runs in `make test`; `make fuzz` runs longer.
FUZZTIME  ?= 6s
LONGFUZZ  ?= 5m
# Figures for BENCHMARKS.md: `make bench` (Go benchmarks), `make
# bench-idle` (memory per idle joined WebSocket), `make bench-peer`
# (channelsd beside a peer server, in one run) and `make bench-history`
# (a topic with history beside one without, in one run).
BENCHTIME ?= 1s
IDLE_CONNS ?= 10000

# Fuzz targets: package and target name.
FUZZ_TARGETS = ./channels:FuzzV1Decode ./channels:FuzzV2Decode ./channels:FuzzV2DecodeBinary ./channels:FuzzAppendJSONString ./transport:FuzzLongPollToken ./pubsub/redis:FuzzDecodeEnvelope ./pubsub/redis:FuzzDecodeCallFrame ./transport:FuzzRelayFrames ./channels/auth:FuzzVerify ./transport:FuzzLongPollBody ./presence:FuzzStateJSON ./cmd/channelsd/app:FuzzRoomFrames ./transport:FuzzLongPollJSONString

export CGO_ENABLED ?= 0
# testcontainers (integration tests): no reaper image can be pulled here,
# and the default gateway is off-limits.
export TESTCONTAINERS_RYUK_DISABLED = true
export TESTCONTAINERS_HOST_OVERRIDE = localhost
export NODE_IMAGE ?= channelsd:test
export REDIS_IMAGE ?= channelsd-redis:test
export HAPROXY_IMAGE ?= channelsd-haproxy:test

.PHONY: run run-cluster run-redis-cluster build image images prereqs prereqs-cluster test test-unit test-cluster test-norace test-hostile lint fuzz fuzz-short bench bench-idle bench-peer bench-history soak clean

# The targets below each keep both cores busy, and a prerequisite check
# may run apt-get: one at a time, in the order written, even under -j.
.NOTPARALLEL:

# What each target needs of the machine, checked in seconds before it
# starts (test/images/prereqs.sh lists the names). Missing Debian packages
# are installed when the user may (root or passwordless sudo; not with
# PREREQS_INSTALL=no), else one line gives the command.
PREREQS        = GO=$(GO) test/images/prereqs.sh
UNIT_NEEDS     = go cgo redis
IMAGES_NEEDS   = go docker certs redis-image haproxy-image
CLUSTER_NEEDS  = $(IMAGES_NEEDS) cgo chromium
TEST_NEEDS     = go cgo docker redis redis-image haproxy-image chromium certs

run:
	$(GO) run ./cmd/channelsd

# A local Redis plus three nodes on :4000, :4001, :4002.
run-cluster: build
	@$(PREREQS) -q redis
	test/run-cluster.sh $(ARGS)

# The same three nodes on a local Redis Cluster (sharded pub/sub): three
# masters with a replica each on 127.0.0.1:7000-7005 (REDIS_PORT,
# REDIS_MASTERS, REDIS_REPLICAS change that), formed by redis-cli.
run-redis-cluster: build
	@$(PREREQS) -q redis
	test/run-redis-cluster.sh $(ARGS)

build:
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/channelsd ./cmd/channelsd
	$(GO) build -trimpath -o $(BIN)/channels-bench ./cmd/channels-bench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Everything: a check of the whole machine first (prereqs), then lint, the
# container images the integration tests run, every test with the race
# detector (test/cluster included), a short fuzz run. Needs a Docker engine;
# redis-server, haproxy, chromium and the rest are installed by prereqs.
test: prereqs lint images test-unit test-cluster test-norace test-hostile fuzz-short

# Everything make test needs, checked (and installed) at once, so that a
# missing package stops the run in seconds rather than after a suite.
prereqs:
	@$(PREREQS) $(TEST_NEEDS)

# Node, Redis, HAProxy and proxy-test backend images for test/ (built
# locally: no registry is needed). NODE_IMAGE, REDIS_IMAGE, HAPROXY_IMAGE
# and BACKEND_IMAGE name them;
# REDIS_IMAGE=redis:7 (HAPROXY_IMAGE=haproxy:2.8) uses that image instead
# of building one from the host's redis-server (haproxy).
images:
	@$(PREREQS) -q $(IMAGES_NEEDS)
	test/images/build.sh

# The production node image (./Dockerfile: FROM scratch, the static binary
# compiled here, no Go image pulled), named $(IMAGE); e.g.
# `make image IMAGE=registry.example.com/channelsd:0.1.0`, then docker push.
# k8s/ runs it.
IMAGE ?= channelsd:latest
image:
	@$(PREREQS) -q go docker certs
	NODE_IMAGE=$(IMAGE) test/images/build.sh node

# The multi-node integration tests (Docker), the chaos suite (its table:
# add -v, or CHAOS_TABLE=<file>), and the browser tests against
# such a cluster (headless Chromium: Debian's chromium package).
# The chaos suite's results table is printed at the end (go test shows a
# passing package's output only with -v, so it goes through a file).
# The rolling restart's 1,000 clients and two publishers run in the test
# process: under the race detector they cannot keep the publishers' pace,
# so that one test runs in a second, plain build (the nodes, in their
# containers, are the same binaries either way); its figures are printed.
ROLLING = ^TestRollingRestart$$
test-cluster: prereqs-cluster images
	@mkdir -p $(BIN)
	CHAOS_TABLE=$(CURDIR)/$(BIN)/chaos-table.txt CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m -skip '$(ROLLING)' ./test/harness ./test/cluster ./test/chaos ./test/browser
	@echo "$(GO) test -count=1 -timeout 5m -run '$(ROLLING)' -v ./test/cluster"; \
	$(GO) test -count=1 -timeout 5m -run '$(ROLLING)' -v ./test/cluster > $(BIN)/rolling.log 2>&1; rc=$$?; \
	if [ $$rc -eq 0 ]; then grep -E '^(--- |ok)|rolling_test.go:' $(BIN)/rolling.log | cut -c1-2000; else grep -v 'lifecycle.go:' $(BIN)/rolling.log; fi; exit $$rc
	@echo "chaos suite:"; cat $(BIN)/chaos-table.txt

# Chromium is checked before the images are built, not after.
prereqs-cluster:
	@$(PREREQS) -q $(CLUSTER_NEEDS)

# Everything that needs no Docker.
UNIT_PKGS = $$($(GO) list ./... | grep -v -e /test/harness -e /test/cluster -e /test/chaos -e /test/browser -e /test/hostile)

test-unit:
	@$(PREREQS) -q $(UNIT_NEEDS)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m $(UNIT_PKGS)

# Tests that measure the runtime's own memory and so cannot run under the
# race detector (it changes stack sizes and heap layout).
test-norace:
	$(GO) test -count=1 -run 'Footprint' ./transport/ ./channels/

# Issue 16's hostile clients, all at once for 60 s against one node with
# its default flags (built without the race detector, as are the load
# generators of the test, for real memory figures) while well-behaved
# clients exchange messages; its figures are printed at the end (through a
# file, as the chaos suite's; on failure go test prints them too).
test-hostile:
	@$(PREREQS) -q go
	@mkdir -p $(BIN)
	HOSTILE_TABLE=$(CURDIR)/$(BIN)/hostile-table.txt $(GO) test -count=1 -timeout 5m ./test/hostile
	@cat $(BIN)/hostile-table.txt

# A target that fails with a bare "context deadline exceeded" and wrote no
# failing input hit Go 1.26's fuzz coordinator race at the end of
# -fuzztime (go.dev/issue/75804, fixed in Go 1.27): it runs once more. Any
# other failure, or a second one, fails the build.
fuzz-short:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		for try in 1 2; do \
			echo "fuzz $$name ($(FUZZTIME))"; \
			out=$$($(GO) test $$pkg -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s 2>&1); rc=$$?; \
			echo "$$out"; \
			[ $$rc -eq 0 ] && break; \
			if [ $$try -eq 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written'; then \
				echo "fuzz $$name: fuzz coordinator deadline race (go.dev/issue/75804), nothing found; running it once more"; \
				continue; \
			fi; \
			exit 1; \
		done; \
	done

fuzz:
	$(MAKE) fuzz-short FUZZTIME=$(LONGFUZZ)

# Go micro-benchmarks, then a short run of every channels-bench scenario
# against nodes (and a Redis) it starts, which rewrites the results
# section of BENCHMARKS.md (needs redis-server on the host).
bench: build
	@$(PREREQS) -q redis
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./channels ./pubsub/... ./transport/...
	$(BIN)/channels-bench all -node-bin $(BIN)/channelsd -out BENCHMARKS.md

# 30 minutes of sockets connecting, joining, leaving and disconnecting;
# fails if the node is left with sockets, channels, presence entries or
# goroutines it did not start with (not part of make test).
SOAK ?= 30m
soak: build
	$(BIN)/channels-bench churn -spawn-node -node-bin $(BIN)/channelsd -rate 200 -duration $(SOAK)

bench-idle: build
	$(BIN)/channels-bench idle -spawn-node -conns $(IDLE_CONNS)

# channelsd beside the centrifuge peer of the shared fanout-bench harness
# (the folder shared/fanout-bench next to the repository; FANOUT_BENCH
# names another), in one run: one node each on its own loopback Redis,
# $(IDLE_CONNS) idle sockets for memory, then SUBS subscribers of one topic
# receiving MSGS broadcasts at RATE/s, and the kernel floor; prints the
# table BENCHMARKS.md records. About two minutes; it stops what it starts.
SUBS ?= 5000
RATE ?= 10
MSGS ?= 100
bench-peer: build
	@$(PREREQS) -q go redis bench-tools
	GO=$(GO) BIN=$(BIN) IDLE=$(IDLE_CONNS) SUBS=$(SUBS) RATE=$(RATE) MSGS=$(MSGS) test/bench-peer.sh

# The same delivery workload on channelsd alone, its topic without history
# and with it, PAIRS pairs of runs alternated in one command: what history
# costs per delivery. About 20 s a run.
PAIRS ?= 5
bench-history: build
	@$(PREREQS) -q go redis bench-tools
	GO=$(GO) BIN=$(BIN) SUBS=$(SUBS) RATE=$(RATE) MSGS=$(MSGS) PAIRS=$(PAIRS) HISTORY=1 test/bench-peer.sh

clean:
	rm -rf $(BIN)
