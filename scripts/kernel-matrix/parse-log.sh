#!/usr/bin/env bash
# Reads one kernel-matrix boot's serial console log and prints its report:
#
#   parse-log.sh LOG
#
# Exit 0 when the guest reached the end and every check and test passed,
# 1 otherwise (a failure, a missing end: timeout, panic, hang), 2 when LOG
# cannot be read. The guest's report lines start with "KM: " (guest/init).
set -uo pipefail

LOG=${1:?usage: parse-log.sh LOG}
[ -r "$LOG" ] || { echo "parse-log: cannot read $LOG" >&2; exit 2; }

tr -d '\r' < "$LOG" | awk '
  # Kernel messages can land in the middle of a line: take "KM: " anywhere.
  { i = index($0, "KM: "); if (i == 0) next; line = substr($0, i + 4) }
  line ~ /^BEGIN /       { begin = line; sub(/^BEGIN /, "", begin) }
  line ~ /^PLAN /        { plan = line; sub(/^PLAN /, "", plan) }
  line ~ /^TEST [^ ]+ (PASS|FAIL)/ {
    split(line, f, " "); tests[++nt] = sprintf("  test  %-32s %s", f[2], substr(line, length(f[1] f[2]) + 3))
    if (f[3] != "PASS") bad++
  }
  line ~ /^TEST-FAILED / { split(line, f, " "); tests[++nt] = "        failed: " f[3] }
  line ~ /^TEST-SKIPPED / { split(line, f, " "); tests[++nt] = "        skipped: " f[3] }
  line ~ /^CHECK /       {
    split(line, f, " ")
    if (f[3] == "PASS") checks_ok++; else { checks_bad++; bad++; failed_checks[++nf] = substr(line, 7) }
    checks_total++
  }
  line ~ /^SECONDS /     { secs = line; sub(/^SECONDS /, "", secs) }
  line ~ /^RESULT /      { result = line; sub(/^RESULT /, "", result) }
  line == "END"          { ended = 1 }
  END {
    print "  boot  " (begin == "" ? "(no report: the guest did not start)" : begin)
    if (plan != "") print "  plan  " plan
    for (i = 1; i <= nt; i++) print tests[i]
    printf "  checks %d passed, %d failed\n", checks_ok, checks_bad
    for (i = 1; i <= nf; i++) print "        FAIL " failed_checks[i]
    if (!ended) { print "  the guest did not reach the end of its run (timeout, panic or hang)"; bad++ }
    else if (result != "PASS") bad++
    printf "  => %s%s\n", (bad ? "FAIL" : "PASS"), (secs != "" ? " (" secs " s in the guest)" : "")
    exit bad ? 1 : 0
  }'
