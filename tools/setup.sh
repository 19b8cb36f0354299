# Sourced by tools/test.sh and tools/demo.sh: makes a fresh machine of this kind ready.
# Installs the Debian packages the project needs when missing, checks the toolchains, builds
# the test control plane from Go modules (cached outside the clone, rebuilt only when missing
# or at another version), and exports where everything is.

export SHARDPLANE_CACHE=${SHARDPLANE_CACHE:-$HOME/.cache/shardplane}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SHARDPLANE_CACHE/target}
mkdir -p "$SHARDPLANE_CACHE"

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# PostgreSQL 15 runs the shard replicas; git is used by git-sync's tests; pkg-config and the
# OpenSSL headers build libgit2's HTTPS transport; iproute2 and nftables make the partition
# tests' hosts (network namespaces) and their faults; iptables gives them a slow link (its
# NFQUEUE target: this kernel has neither netem nor nftables' queue).
debian_packages=(postgresql-15 postgresql-contrib git pkg-config libssl-dev ca-certificates
  iproute2 nftables iptables)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
export PATH="/usr/lib/postgresql/15/bin:$PATH"

# A PostgreSQL server SIGKILLed by a test (a node's death) leaves its System V interlock
# segment behind, and the test then removes its data directory, so nothing reclaims it; at
# kernel.shmmni segments (4,096) every new server fails with "could not create shared memory
# segment". Remove the ones no process attaches to, owned by the PostgreSQL user or by us
# (a running server attaches to its own; a stopped one has none).
for segment in $(ipcs -m 2>/dev/null | awk -v me="$(id -un)" \
    'NR > 3 && $6 == 0 && ($3 == "postgres" || $3 == me) { print $2 }'); do
  ipcrm -m "$segment" 2>/dev/null || true
done

for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed; this machine kind ships it" >&2; exit 1; }
done

step "test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)"
SHARDPLANE_TESTENV_BIN=$(bash "$(dirname "${BASH_SOURCE[0]}")/testenv/build.sh" | tail -n 1)
export SHARDPLANE_TESTENV_BIN
export PATH="$SHARDPLANE_TESTENV_BIN:$PATH"
