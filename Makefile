# popvmm — see README.md. Targets print what they do; long steps say what
# they wait for.

GO       ?= go
BIN      := bin/popvmm
CLUSTER  ?= examples/cluster.toml
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
FUZZTIME ?= 60s

.PHONY: all deps build install uninstall images initramfs lab guests up test test-kvm test-images vet fuzz bench bench-boot clean

all: build

## deps: install what building, testing and building images needs (Debian, as root)
deps:
	@scripts/deps.sh

## build: the popvmm binary in bin/
build:
	@echo "==> building $(BIN) and bin/popagent ($(VERSION))"
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/popvmm
	$(GO) build -o bin/popagent ./cmd/popagent

## install: bin/popvmm (and bin/popagent, if built) into $(DESTDIR)$(PREFIX)/bin; nothing else
PREFIX ?= /usr/local
BINDIR  = $(DESTDIR)$(PREFIX)/bin
install: build
	@echo "==> installing into $(BINDIR)"
	install -d $(BINDIR)
	install -m 0755 $(BIN) $(BINDIR)/popvmm
	@if [ -f bin/popagent ]; then echo "install -m 0755 bin/popagent $(BINDIR)/popagent"; install -m 0755 bin/popagent $(BINDIR)/popagent; fi

## uninstall: remove what install put in $(DESTDIR)$(PREFIX)/bin
uninstall:
	rm -f $(BINDIR)/popvmm $(BINDIR)/popagent

## images: both flavours' kernels and initramfs in images/out (cached by input hash)
images: deps
	@images/build.sh all

## rootfs: the Debian 12 root image kernels boot with root = (images/out/debian.ext4, and
## debian.manifest: its packages); mmdebstrap + mkfs.ext4 -d, cached by recipe (docs/storage.md)
.PHONY: rootfs
rootfs: deps
	@images/build-rootfs.sh

## mpi: the MPI programs (images/mpi: hello, pingpong, allreduce) built against Debian's
## MPICH and packed into images/out/mpi.ext4, a disk for the kernels (docs/mpi.md)
.PHONY: mpi
mpi: deps build
	@images/mpi/build.sh

## initramfs: only the initramfs of both flavours (seconds; tests need it)
initramfs:
	@images/build.sh initramfs

## lab: the lab image (Debian's kernel + kvm_amd, 9p, ...) for machines without /dev/kvm
LAB_DEBS := $(shell awk '/^linux-image-/ {print $$1}' images/packages.lock) busybox-static
lab: build
	@$(BIN) lab build --check 2>/dev/null || echo "==> building the lab image (once per version: fetches $(LAB_DEBS), about 70 MB, then packs it in seconds)"
	@images/fetch.sh $(LAB_DEBS)
	@$(BIN) lab build --debs images/build/debs

## up: install, build and bring the example cluster up in the foreground;
## without a usable /dev/kvm, inside the lab (popvmm lab up)
up: deps build
	@if $(BIN) check-kvm --quiet; then \
	  $(MAKE) --no-print-directory images && echo "==> $(BIN) up $(CLUSTER)" && $(BIN) up $(CLUSTER); \
	else \
	  echo "==> no usable /dev/kvm here ($$($(BIN) check-kvm | head -1 | sed 's/^KVM: //')): bringing $(CLUSTER) up in the lab instead (kvm_amd under QEMU's emulator; boots in 10-20 s, slower on a busy machine); guest images first (cached, minutes the first time)"; \
	  $(MAKE) --no-print-directory images lab && echo "==> $(BIN) lab up $(CLUSTER)" && $(BIN) lab up $(CLUSTER); \
	fi

## vet: gofmt and go vet
vet:
	@echo "==> gofmt and go vet"
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$bad" ]; then echo "gofmt would change: $$bad"; exit 1; fi
	$(GO) vet ./...

## test: the whole suite, installing and building what it needs first (deps,
## the guest images, the Debian root image, the lab image): tier 1 here, then the KVM tiers
## directly or in the lab
test: deps images rootfs mpi lab vet
	@echo "==> go test, tier 1 (race detector on; fuzz targets run their seed corpus; KVM tiers next)"
	POPVMM_KVM_LATER=1 $(GO) test -race -count=1 ./...
	@scripts/test-kvm.sh

## guests: the tier-2 freestanding test guests (tests/guests/out; test-kvm.sh builds them too)
guests:
	@tests/guests/build.sh

## test-kvm: only the KVM tiers (tests named *KVM*), directly or in the lab
test-kvm: build lab
	@scripts/test-kvm.sh

## test-images: the end-to-end image tests, required to run (needs make images rootfs)
test-images: images rootfs
	POPVMM_REQUIRE_IMAGES=1 $(GO) test -count=1 -v ./tests/e2e

## fuzz: run every fuzz target for FUZZTIME each (default 60s)
fuzz:
	@for t in cluster:FuzzInspectMatchesLoad cluster:FuzzParseCPUList cluster:FuzzParseCheck cluster:FuzzParseSize initramfs:FuzzArchivePaths ipi/agent:FuzzMigrateTarget ipi/agent:FuzzParseChunk ipi/msg:FuzzReceiveGarbage ipi:FuzzRegisters memmap:FuzzCheckKernel internal/termfilter:FuzzFilter memmap:FuzzNew vmm/boot:FuzzLoad vmm/bus:FuzzBus vmm/guestmem:FuzzAccess vmm/pci:FuzzPorts vmm/virtio:FuzzQueue vmm/virtio:FuzzTransport vmm:FuzzHandleExit vnet:FuzzNetDevice vblk:FuzzBlockDevice vtty:FuzzUART winnet:FuzzRings; do \
	  pkg=$${t%%:*}; fn=$${t#*:}; \
	  echo "==> fuzzing $$pkg $$fn for $(FUZZTIME)"; \
	  $(GO) test ./$$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10s || exit 1; \
	done

## bench: benchmarks (see docs/benchmarks.md)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## bench-boot: boot both flavours under QEMU and time them to "Run /init"
bench-boot: images
	@bench/boot-qemu.sh

## demo: the Popcorn story, narrated: two kernels, window ping/info/tty, a host peer, a crash, a rejoin, down (in the lab without KVM)
.PHONY: demo
demo: build images lab
	@scripts/demo.sh

clean:
	rm -rf bin
