#!/usr/bin/env bash
# Installs QEMU 10.0.2 from Debian's bookworm-backports into a private prefix
# (target/qemu10/, git-ignored) beside the stock QEMU 7.2, which stays the default for
# everything else: nothing is installed system-wide. Steps: add a bookworm-backports
# stanza to apt's sources when there is none (same URIs and Signed-By as the existing
# Debian stanza; backports have priority 100, so nothing installed changes), apt-get
# update, apt-get download the QEMU 10 packages, dpkg-deb -x them into the prefix, check
# the binary's version, that it finds every shared library and that the firmware it boots
# from is there. Idempotent: a complete prefix of the right version is reused at once.
# Prints the path of qemu-system-x86_64 as its last line of output (stdout); everything
# else goes to stderr. Fails loudly when anything cannot be had.
#
#   scripts/install-qemu10.sh                 # -> .../target/qemu10/usr/bin/qemu-system-x86_64
#   QEMU10_PREFIX=/opt/qemu10 scripts/install-qemu10.sh
#
# Run the binary as `<prefix>/usr/bin/qemu-system-x86_64 -L <prefix>/usr/share/qemu ...`,
# with QEMU_MODULE_DIR=<prefix>/usr/lib/x86_64-linux-gnu/qemu so that it never loads the
# stock 7.2 modules (tests/qemu/lib.sh: qemu10_env). Needs root when the apt sources must
# change or the package lists are stale.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# The Debian version of QEMU 10.0.2 in bookworm-backports. A newer backport replaces it
# in the archive some day; then set QEMU10_DEBVER to what `apt-cache madison
# qemu-system-x86` lists (the script fails and says so rather than take another one).
DEBVER=${QEMU10_DEBVER:-1:10.0.2+ds-2+deb13u1~bpo12+1}
UPSTREAM=${DEBVER#*:}
UPSTREAM=${UPSTREAM%%+*}
prefix=${QEMU10_PREFIX:-$here/target/qemu10}
# qemu-system-x86: the binary; -common: its helpers and keymaps; -data: firmware links
# and option ROMs; qemu-utils: qemu-storage-daemon and qemu-img; qemu-block-extra: the
# block drivers built as modules (libiscsi ...); qemu-system-modules-opengl and -spice:
# ui-opengl.so and ui-spice-core.so, which QEMU 10 loads at start when the command line
# has display defaults. QEMU looks for a module in QEMU_MODULE_DIR and then in its
# built-in module directory, which holds the stock 7.2 build's: without its own copy it
# finds those and prints "failed to initialize module" or "failed to open module".
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra
  qemu-system-modules-opengl qemu-system-modules-spice)

say() { echo "install-qemu10: $*" >&2; }
die() { say "error: $*"; exit 1; }

bin=$prefix/usr/bin/qemu-system-x86_64
stamp=$prefix/.debver

# complete: the prefix holds the right version and its binary runs.
complete() {
  [[ -f $stamp && $(cat "$stamp") == "$DEBVER" && -x $bin ]] || return 1
  QEMU_MODULE_DIR=$prefix/usr/lib/x86_64-linux-gnu/qemu "$bin" --version 2>/dev/null |
    head -n 1 | grep -q "version $UPSTREAM"
}

mkdir -p "$(dirname "$prefix")"
# One installer at a time per prefix (another worktree's test run may be installing).
exec 9> "$prefix.lock"
flock -w 900 9 || die "another install-qemu10 holds $prefix.lock for more than 900 s"

if complete; then
  say "QEMU $UPSTREAM present"
  echo "$bin"
  exit 0
fi

need_root() {
  [[ $(id -u) -eq 0 ]] || die "$1 needs root (run as root, or install QEMU $UPSTREAM into $prefix by hand)"
}

# --- 1. bookworm-backports in apt's sources -------------------------------------------
# Active (uncommented) mentions of the suite in a one-line .list or a deb822 .sources file.
has_backports() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    if grep -vE '^[[:space:]]*#' "$f" | grep -qE '(^|[[:space:]])bookworm-backports([[:space:]]|$)'; then
      return 0
    fi
  done
  return 1
}

# The deb822 stanza whose URIs are Debian's main archive (not -security) and whose Suites
# hold bookworm, from the given file: prints "URIs<TAB>Signed-By" (Signed-By may be empty).
debian_stanza() {
  awk '
    function flush() {
      if (uris ~ /\/debian\/?$/ && suites ~ /(^| )bookworm( |$)/ && types ~ /(^| )deb( |$)/)
        { print uris "\t" signed; found = 1; exit }
      uris = ""; suites = ""; types = ""; signed = ""
    }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    { key = $1; sub(/:$/, "", key); $1 = ""; sub(/^[[:space:]]+/, "")
      if (key == "URIs") uris = $0
      else if (key == "Suites") suites = $0
      else if (key == "Types") types = $0
      else if (key == "Signed-By") signed = $0 }
    END { if (!found) flush() }
  ' "$1"
}

add_backports() {
  local f line uris="" signed="" out=/etc/apt/sources.list.d/bookworm-backports.sources
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    line=$(debian_stanza "$f")
    if [[ -n $line ]]; then
      uris=${line%%$'\t'*}
      signed=${line#*$'\t'}
      break
    fi
  done
  if [[ -z $uris && -f /etc/apt/sources.list ]]; then
    # One-line format: "deb [options] <uri> bookworm main ...".
    line=$(grep -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list |
      grep -E '[[:space:]]bookworm[[:space:]]' | grep -vE 'security' | head -n 1 || true)
    if [[ -n $line ]]; then
      uris=$(awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' <<< "$line")
      signed=$(grep -oE 'signed-by=[^] ]+' <<< "$line" | cut -d= -f2 || true)
    fi
  fi
  [[ -n $uris ]] || die "no Debian bookworm stanza in apt's sources to copy for bookworm-backports; add one for 'bookworm-backports main' by hand"
  [[ -n $signed ]] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -e ${signed%% *} || $signed == *BEGIN* ]] || die "keyring $signed of the Debian stanza is missing"
  say "adding $out (URIs: $uris)"
  {
    echo "# Added by vscsid's scripts/install-qemu10.sh: QEMU 10 for a private prefix."
    echo "# Backports have priority 100: nothing installed is upgraded from here by itself."
    echo "Types: deb"
    echo "URIs: $uris"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    echo "Signed-By: $signed"
  } > "$out.tmp"
  mv "$out.tmp" "$out"
}

available() {
  apt-cache madison qemu-system-x86 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' |
    grep -qxF "$DEBVER"
}

if ! has_backports; then
  need_root "adding bookworm-backports to apt's sources"
  add_backports
  need_root "apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || die "apt-get update failed"
elif ! available; then
  need_root "apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || die "apt-get update failed"
fi
if ! available; then
  say "apt offers these versions of qemu-system-x86:"
  apt-cache madison qemu-system-x86 >&2 || true
  die "qemu-system-x86 $DEBVER is not available from bookworm-backports (set QEMU10_DEBVER to one listed above)"
fi

# --- 2. download ------------------------------------------------------------------------
dl=$(mktemp -d)
unpack=""
cleanup() { rm -rf "$dl" ${unpack:+"$unpack"}; }
trap cleanup EXIT
# apt downloads as the _apt user when it can write the directory (no sandbox warning).
if id _apt >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then chown _apt "$dl"; fi
specs=()
for p in "${PACKAGES[@]}"; do specs+=("$p=$DEBVER"); done
say "downloading ${PACKAGES[*]} ($DEBVER)"
(cd "$dl" && apt-get -q download "${specs[@]}") >&2 || die "apt-get download failed"
for p in "${PACKAGES[@]}"; do
  compgen -G "$dl/${p}_*.deb" >/dev/null || die "$p was not downloaded"
done

# --- 3. unpack ------------------------------------------------------------------------------
unpack=$(mktemp -d "$prefix.new.XXXXXX")
for deb in "$dl"/*.deb; do
  dpkg-deb -x "$deb" "$unpack" || die "dpkg-deb -x $(basename "$deb") failed"
done
[[ -x $unpack/usr/bin/qemu-system-x86_64 ]] || die "the packages hold no usr/bin/qemu-system-x86_64"

# --- 4. checks --------------------------------------------------------------------------------
for f in usr/bin/qemu-system-x86_64 usr/lib/x86_64-linux-gnu/qemu/ui-opengl.so \
  usr/lib/x86_64-linux-gnu/qemu/ui-spice-core.so; do
  missing=$(ldd "$unpack/$f" | grep 'not found' || true)
  [[ -z $missing ]] || die "$f of QEMU $UPSTREAM lacks shared libraries (install them with apt-get):
$missing"
done
version=$(QEMU_MODULE_DIR=$unpack/usr/lib/x86_64-linux-gnu/qemu \
  "$unpack/usr/bin/qemu-system-x86_64" --version | head -n 1) || die "qemu-system-x86_64 $UPSTREAM does not run"
grep -q "version $UPSTREAM" <<< "$version" || die "unexpected version: $version"
# A q35 machine must start: its firmware (bios-256k.bin) comes from the host's seabios
# package (/usr/share/seabios, on the binary's search path), its option ROMs from the
# prefix. -S: the machine is built, firmware loaded, and nothing runs; 124 = still up.
set +e
QEMU_MODULE_DIR=$unpack/usr/lib/x86_64-linux-gnu/qemu timeout 3 \
  "$unpack/usr/bin/qemu-system-x86_64" -L "$unpack/usr/share/qemu" -machine q35 -accel tcg \
  -nodefaults -display none -monitor none -serial none -S > "$dl/smoke.log" 2>&1
rc=$?
set -e
# It must also start silently (a module of another build, a missing file ...).
if grep -qv 'terminating on signal' "$dl/smoke.log"; then
  die "qemu-system-x86_64 $UPSTREAM complains at start: $(grep -v 'terminating on signal' "$dl/smoke.log" | head -n 3)"
fi
((rc == 124)) || die "qemu-system-x86_64 $UPSTREAM cannot start a q35 machine (exit $rc): $(grep -v 'terminating on signal' "$dl/smoke.log" | head -n 3)
(its firmware bios-256k.bin comes from Debian's seabios package)"

echo "$DEBVER" > "$unpack/.debver"
# Only a prefix this script made (or nothing) is replaced.
if [[ -e $prefix && ! -f $prefix/.debver ]] && [[ -n $(ls -A "$prefix") ]]; then
  die "$prefix exists and was not made by this script; remove it or set QEMU10_PREFIX"
fi
rm -rf "$prefix"
mv "$unpack" "$prefix"
unpack=""
complete || die "$bin does not run after installation"
say "installed: $version"
echo "$bin"
