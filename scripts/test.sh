#!/usr/bin/env bash
# The project's test command (README): starts the services the tests need, then formats-checks, lints
# and tests the whole workspace. Under CI=true a missing service is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/services.sh ]; then
  # services.sh installs (if missing) and starts PostgreSQL and MariaDB, and prints export lines.
  # (assigned first so that a failing services.sh stops the run under `set -e`)
  exports="$(scripts/services.sh)"
  eval "$exports"
fi

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The default build (SQLite + local disk, what `cargo add kestra` gives) must be warning-free too:
# code behind a feature can leave dead code in it that --all-features never shows.
cargo clippy --workspace -- -D warnings
echo "== cargo doc" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features
echo "== cargo test" >&2
# --no-fail-fast: one failing test binary must not hide the failures of the others.
cargo test --workspace --all-features --no-fail-fast
echo "== benchmark smoke run" >&2
# The engine benchmark (benches/engine.rs) in its smoke mode: every scenario once, tiny sizes, SQLite,
# a few seconds - so it never rots. `cargo bench --all-features --bench engine` measures for real.
cargo test --all-features --bench engine
