#!/usr/bin/env bash
# Builds the Debian package of backchannel with cargo-deb and checks it (issue 21, point 1):
# its contents (binary, systemd unit, config file, system user, a man page per command,
# completions for bash, zsh and fish), the unit with systemd-analyze, and the installed
# binary run from a temporary root (`dpkg -x`): `--version`, and `relay --config` on the
# shipped config, which must be the relay's defaults.
#
#   scripts/package.sh [PROFILE]
#
# PROFILE is a cargo profile (default: release). `.ci/run` passes `dev`, to package and check
# the binary its tests already built instead of building a release one (about 20 minutes on
# 2 cores): cargo-deb warns that a dev package is not for release, which is what such a
# package is for. The package is written to target/debian/backchannel.deb.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-release}"
case "$profile" in
    dev) dir=debug ;;
    *) dir="$profile" ;;
esac

# cargo-deb, pinned, installed once from crates.io.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

cargo build --locked -p backchannel --profile "$profile"
bin="target/$dir/backchannel"

# The man pages and completions, from the binary itself.
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
commands() { # the subcommands `$@ --help` lists, but `help`
    "$@" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }' | grep -vx help || true
}
"$bin" man > "$assets/man/backchannel.1"
pages=1
for c in $(commands "$bin"); do
    "$bin" man "$c" > "$assets/man/backchannel-$c.1"
    pages=$((pages + 1))
    for s in $(commands "$bin" "$c"); do
        "$bin" man "$c" "$s" > "$assets/man/backchannel-$c-$s.1"
        pages=$((pages + 1))
    done
done
"$bin" completions bash > "$assets/completions/backchannel"
"$bin" completions zsh > "$assets/completions/_backchannel"
"$bin" completions fish > "$assets/completions/backchannel.fish"

deb=target/debian/backchannel.deb
mkdir -p target/debian
cargo deb -p backchannel --no-build --profile "$profile" --output "$deb"

fail() { echo "package.sh: $*" >&2; exit 1; }

# What the package holds.
listing=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
for path in ./usr/bin/backchannel ./etc/backchannel/relay.toml \
    ./usr/lib/sysusers.d/backchannel.conf ./usr/share/bash-completion/completions/backchannel \
    ./usr/share/zsh/vendor-completions/_backchannel \
    ./usr/share/fish/vendor_completions.d/backchannel.fish ./usr/share/man/man1/backchannel.1.gz \
    ./usr/share/man/man1/backchannel-relay.1.gz ./usr/share/man/man1/backchannel-send.1.gz \
    ./usr/share/man/man1/backchannel-drop-send.1.gz; do
    grep -qx "$path" <<<"$listing" || fail "the package lacks $path"
done
unit=$(grep -E '^\./(usr/)?lib/systemd/system/backchannel-relay\.service$' <<<"$listing") \
    || fail "the package lacks the relay's systemd unit"
held=$(grep -c '^\./usr/share/man/man1/backchannel.*\.1\.gz$' <<<"$listing" || true)
[ "$held" -eq "$pages" ] || fail "the package holds $held man pages, the binary has $pages"
dpkg-deb -f "$deb" Conffiles 2>/dev/null | grep -q /etc/backchannel/relay.toml \
    || dpkg-deb -I "$deb" conffiles | grep -q /etc/backchannel/relay.toml \
    || fail "/etc/backchannel/relay.toml is not a conffile"

# Installed into a temporary root.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
"$root/usr/bin/backchannel" --version
printed=$("$root/usr/bin/backchannel" relay --config "$root/etc/backchannel/relay.toml" --print-config)
[ "$printed" = "$(cat "$root/etc/backchannel/relay.toml")" ] \
    || fail "the shipped config is not the relay's defaults: $(diff <(echo "$printed") "$root/etc/backchannel/relay.toml")"

# The unit as installed, with its binary under the temporary root.
sed "s#/usr/bin/backchannel#$root/usr/bin/backchannel#" "$root/${unit#./}" > "$root/backchannel-relay.service"
systemd-analyze verify "$root/backchannel-relay.service"
systemd-analyze security --offline=true "$root/backchannel-relay.service" | tail -1

echo "package.sh: $deb ($(du -h "$deb" | cut -f1), $pages man pages) checked"
