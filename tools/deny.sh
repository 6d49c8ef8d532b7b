#!/usr/bin/env bash
# cargo-deny over Cargo.lock with deny.toml: licenses, bans, sources and advisories.
#
# Advisories are checked against the RustSec database fetched from GitHub where it can
# be reached. Where it cannot (this project's CI machine reaches the package registries
# only), against the snapshot in ../shared/advisory-db (ADVISORY_DB_SNAPSHOT names
# another), saying which commit and date it is. With neither, "NOT CHECKED" on one
# line: a failure under CI (CI=true) or with REQUIRE_ADVISORIES=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(tools/install.sh)"
"$bin/cargo-deny" --log-level error check licenses bans sources

required=0
if [[ "${REQUIRE_ADVISORIES:-0}" == 1 || "${CI:-}" == true ]]; then required=1; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if "$bin/cargo-deny" --log-level error check advisories >"$work/github.log" 2>&1; then
  echo "cargo-deny advisories: ok (the RustSec database from GitHub)"
  exit 0
elif ! grep -q "failed to fetch advisory database" "$work/github.log"; then
  cat "$work/github.log" >&2
  exit 1
fi

snapshot="${ADVISORY_DB_SNAPSHOT:-../shared/advisory-db}"
if [[ ! -f "$snapshot/SNAPSHOT" || ! -d "$snapshot/crates" ]]; then
  echo "cargo-deny advisories: NOT CHECKED: the RustSec database (github.com) is unreachable and there is no snapshot at $snapshot" >&2
  if [[ "$required" == 1 ]]; then cat "$work/github.log" >&2; exit 1; fi
  exit 0
fi

# The snapshot's commit and date, as its SNAPSHOT file says them.
commit="$(grep -oE '\b[0-9a-f]{40}\b' "$snapshot/SNAPSHOT" | head -n1)"
date="$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}[+-][0-9:]{5}' "$snapshot/SNAPSHOT" | head -n1)"
if [[ -z "$commit" || -z "$date" ]]; then
  echo "cargo-deny advisories: $snapshot/SNAPSHOT names no commit and date" >&2
  exit 1
fi

# cargo-deny reads a database as a git checkout in a folder named after its URL (this
# one for the default URL), and judges its age by the HEAD commit's time: a checkout of
# the snapshot, committed at the snapshot's own date.
db="$work/db/advisory-db-3157b0e258782691"
mkdir -p "$db"
cp -R "$snapshot/." "$db/"
chmod -R u+w "$db"
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
    git -c user.name=rustsec-snapshot -c user.email=snapshot@localhost \
    -c commit.gpgsign=false commit -q -m "RustSec advisory-db snapshot of $commit"
)
# The project's deny.toml, the database path set, and the snapshot's age accepted (it
# is said below; a newer snapshot replaces it in ../shared).
age_days=$(( ( $(date +%s) - $(date -d "$date" +%s) ) / 86400 ))
python3 - "$work/deny.toml" "$work/db" "$(( age_days + 1 ))" <<'EOF'
import pathlib, re, sys
out, db, days = sys.argv[1], sys.argv[2], sys.argv[3]
text = pathlib.Path("deny.toml").read_text()
extra = f'db-path = "{db}"\nmaximum-db-staleness = "P{days}D"\n'
text, n = re.subn(r"^\[advisories\]\n", "[advisories]\n" + extra, text, count=1, flags=re.M)
if n != 1:
    sys.exit("deny.toml has no [advisories] table")
pathlib.Path(out).write_text(text)
EOF
# Offline: the crate graph from cargo beforehand, the database from the checkout.
cargo metadata --format-version 1 --all-features --locked >"$work/metadata.json"
if "$bin/cargo-deny" --log-level error --offline --config "$work/deny.toml" \
  --metadata-path "$work/metadata.json" check advisories; then
  echo "cargo-deny advisories: ok (the RustSec snapshot of commit $commit, $date, $age_days days old, from $snapshot)"
else
  echo "cargo-deny advisories: FAILED against the RustSec snapshot of commit $commit ($date)" >&2
  exit 1
fi
