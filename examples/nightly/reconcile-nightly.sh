#!/bin/sh
# Nightly reconcile of one migration: reports under $REPORTS, history in the target's
# dualwrite.reconcile_runs, one summary line per run in the journal / cron mail, and an alert
# (your command in $ALERT) on anything but a clean run. Exit code: dualwrite's own.
#
#   0 clean    1 drift    2 error (bad config, database or broker unreachable)    3 incomplete
#
# Used by dualwrite-reconcile.service and by the cron example; adjust the variables there.
set -u
MIGRATION=${MIGRATION:-migration.toml}
REPORTS=${REPORTS:-reports}
ALERT=${ALERT:-logger -t dualwrite-reconcile -p user.err}
DAY=$(date -u +%F)
mkdir -p "$REPORTS"

dualwrite reconcile "$MIGRATION" --quiet --wait-s "${WAIT_S:-300}" \
    --artifact "$REPORTS/drift-$DAY.jsonl" \
    --markdown "$REPORTS/reconcile-$DAY.md" \
    --html "$REPORTS/reconcile-$DAY.html" > "$REPORTS/summary-$DAY.txt"
status=$?
cat "$REPORTS/summary-$DAY.txt"   # the one-line summary: into the journal / cron mail

case $status in
    0) ;;
    1) $ALERT "DRIFT: $(cat "$REPORTS/summary-$DAY.txt"); keys in $REPORTS/drift-$DAY.jsonl" ;;
    3) $ALERT "INCOMPLETE (pipeline lagging?): $(cat "$REPORTS/summary-$DAY.txt")" ;;
    *) $ALERT "reconcile failed with exit $status; see the job's log" ;;
esac
exit $status
