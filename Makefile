# Set-up is two commands: `make demo` and `make test`. Each installs what is
# missing (apt packages, a venv under the repo) and is safe to run again.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := wireguard-go wireguard-tools nftables iproute2 iputils-ping curl python3-venv
BENCH_APT_PACKAGES := serf

.PHONY: all deps sysdeps venv test demo bench clean

all: test

# Install only the apt packages that are missing, so a warm machine does nothing.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

sysdeps:
	$(call apt_install,$(APT_PACKAGES))

$(VENV)/.stamp-deps: pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp-deps

deps: sysdeps venv

test: deps
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

demo: deps
	$(VENV)/bin/meshd demo

bench: deps
	$(call apt_install,$(BENCH_APT_PACKAGES))
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/crypto_wire.py --out bench/RESULTS.md
	$(PY) bench/sim_scale.py --n 100,1000,10000 --out bench/RESULTS.md
	$(PY) bench/wake_floor.py --out bench/RESULTS.md
	$(PY) bench/join_floor.py --out bench/RESULTS.md
	$(PY) bench/vs_peers.py --n 10,25,50,100 --reps 2 --out bench/RESULTS.md

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis .mypy_cache
