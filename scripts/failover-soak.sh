#!/usr/bin/env bash
# The failover test at length (issue 17, point 1; docs/reliability.md, "Failover"): 1,000
# sends through two relays on a three-node NATS cluster, the node leading the envelope stream
# killed every 100 sends and restarted 50 sends later, a relay killed near the end. Every send
# must be acknowledged within its command and every message shown once; prints the figures.
#
# Usage: bash scripts/failover-soak.sh [SENDS]   (default 1000; installs nats-server if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
sends="${1:-1000}"
BACKCHANNEL_FAILOVER_SENDS="$sends" cargo nextest run -p backchannel --test cluster \
    every_send_is_acknowledged_within_its_command_while_leaders_and_a_relay_die --no-capture 2>&1 |
    grep -E "sends in|killing|healthy|PASS|FAIL|panicked|not acknowledged"
