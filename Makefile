# archforge developer commands. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
ARCHFORGE = $(CARGO) run -q -p archforge --

.PHONY: demo help setup test fmt-check clippy unit manifests crds chart chart-readme golden render bench-index bench-local e2e e2e-scale

## A real two-platform build on this machine into a throwaway local registry, signed with a
## key it generates, verified with skopeo's sigstoreSigned policy and `archforge verify`, and
## its provenance subjects printed (needs root for apt-get and binfmt_misc; see
## scripts/setup-host.sh).
demo: setup
	$(CARGO) build -q -p archforge --bin archforge --example demo
	target/debug/examples/demo target/debug/archforge

## Lists every target with its comment (the `## ` lines above it in this Makefile).
help:
	@awk '/^## / { doc = doc (doc ? "\n" : "") substr($$0, 4); next } \
	     /^[a-zA-Z0-9_-]+:/ && doc { sub(/:.*/, ""); gsub(/\n/, "\n                ", doc); printf "  %-13s %s\n", $$0, doc } \
	     { doc = "" }' $(firstword $(MAKEFILE_LIST))

## Installs and prepares what builds and tests need (idempotent).
setup:
	bash scripts/setup-host.sh

## The whole test suite: formatting, lints, unit and integration tests against real
## registries, git servers, buildah and qemu.
test: setup fmt-check clippy unit

## Fails when any file is not formatted as `cargo fmt` would.
fmt-check:
	$(CARGO) fmt --all -- --check

## Clippy over every crate and target, warnings as errors.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Every crate's unit and integration tests (`cargo test --workspace`).
unit:
	$(CARGO) test --workspace

## Regenerate the install files: the CRD from operator/src/api.rs (crds/ and its copies in
## the chart and config/crd/), the chart's operator rules from operator/src/rbac.rs, the
## chart's copies of the node profiles (config/apparmor/, config/seccomp/), then config/rbac/,
## config/manager/ and config/node-profiles/ from the chart's render. Tests fail on any drift.
manifests:
	$(ARCHFORGE) crd > crds/imagebuilds.archforge.dev.yaml
	cp crds/imagebuilds.archforge.dev.yaml charts/archforge/crds/
	cp crds/imagebuilds.archforge.dev.yaml config/crd/
	$(ARCHFORGE) crd --kind BuildPolicy > crds/buildpolicies.archforge.dev.yaml
	cp crds/buildpolicies.archforge.dev.yaml charts/archforge/crds/
	cp crds/buildpolicies.archforge.dev.yaml config/crd/
	$(ARCHFORGE) rbac --chart-rules > charts/archforge/templates/_rbac-rules.tpl
	cp config/apparmor/archforge-builder config/apparmor/archforge-buildkit \
	  config/seccomp/archforge-builder.json config/seccomp/archforge-buildkit.json charts/archforge/files/
	python3 scripts/kustomize-base.py --chart charts/archforge --out config

## The former name of `make manifests`.
crds: manifests

## Render the Helm chart as `helm template` would (VALUES=file for other values), and lint it.
chart:
	python3 scripts/helm.py render charts/archforge $(if $(VALUES),--values $(VALUES))
	python3 scripts/helm.py lint charts/archforge $(if $(VALUES),--values $(VALUES)) >&2

## Regenerate the values table of charts/archforge/README.md from values.yaml's comments
## (a test fails when the committed table differs).
chart-readme:
	python3 scripts/chart-readme.py --write

## Regenerate the golden rendered Jobs (review the diff by eye before committing).
golden:
	ARCHFORGE_UPDATE_GOLDEN=1 $(CARGO) test -p archforge --test render --test confinement

## Print the Jobs the sample ImageBuild would create (a dry run, no cluster needed).
render:
	$(ARCHFORGE) render config/samples/imagebuild.yaml

## Benchmark index assembly against buildah's manifest commands, and what signing and
## attesting add to a 2-platform publish (needs docker-registry, buildah).
bench-index:
	$(CARGO) bench -p archforge --bench index

## Benchmark a two-platform local build against buildah bud --platform ... --manifest.
bench-local: setup
	$(CARGO) bench -p archforge --bench local

## The end-to-end suite against the cluster named by KUBECONFIG; needs ARCHFORGE_E2E_REGISTRY
## and, for clusters whose nodes run no pods, ARCHFORGE_E2E_SIMULATE_NODES=1 (CONTRIBUTING.md:
## "End-to-end tests"). E2E_ARGS takes libtest flags, e.g. E2E_ARGS="happy_path --test-threads 1".
e2e:
	@test -n "$$KUBECONFIG" || { echo "make e2e: no cluster was given: set KUBECONFIG to the cluster to test (see CONTRIBUTING.md, End-to-end tests)" >&2; exit 2; }
	$(CARGO) build -q -p archforge --bin archforge
	$(CARGO) run -q -p archforge-e2e -- $(E2E_ARGS)

## The scale benchmark (simulated nodes): N ImageBuilds of two platforms, N = 100 and 1000
## unless SCALE_ARGS="--builds 50,500".
e2e-scale:
	@test -n "$$KUBECONFIG" || { echo "make e2e-scale: no cluster was given: set KUBECONFIG to the cluster to test (see CONTRIBUTING.md, End-to-end tests)" >&2; exit 2; }
	$(CARGO) build -q --release -p archforge --bin archforge
	ARCHFORGE_E2E_OPERATOR=target/release/archforge $(CARGO) run -q --release -p archforge-e2e -- scale $(SCALE_ARGS)
