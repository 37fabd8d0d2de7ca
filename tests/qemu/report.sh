# Sourced by the QEMU end-to-end scripts: one line per check, counted in $passed and
# $failed, from the host's own checks and from the guest's console.
passed=0
failed=0
# Put before every check's name (a script running its checks more than once: "kill-").
report_prefix=""

report() { # report <name> <PASS|FAIL> <detail>
  printf '%-28s %s  %s\n' "$report_prefix$1" "$2" "$3"
  if [[ $2 == PASS ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

# report_guest_checks <serial log> <name>...: the guest's last
# "VSCSID-CHECK <name> PASS|FAIL <detail>" line of each name; a missing one fails. Firmware
# output may share a line with the guest's first message, so lines match anywhere.
report_guest_checks() {
  local serial=$1 checks line name res detail
  shift
  checks=$(tr -d '\r' < "$serial" | grep -ao 'VSCSID-CHECK .*' || true)
  for name in "$@"; do
    line=$(grep -a "^VSCSID-CHECK $name " <<< "$checks" | tail -n 1 || true)
    if [[ -z $line ]]; then
      report "$name" FAIL "check did not run (guest stopped early?)"
    else
      read -r _ _ res detail <<< "$line"
      report "$name" "$res" "$detail"
    fi
  done
}

# report_powered_off <serial log> <QEMU exit status> <detail when it passed>: the guest
# finished its checks and powered QEMU off.
report_powered_off() {
  if [[ $2 -eq 0 ]] && grep -aq "VSCSID-RESULT" "$1"; then
    report guest-powered-off PASS "$3"
  else
    report guest-powered-off FAIL "QEMU exit status $2"
  fi
}

# report_qemu_log_clean <QEMU's output>: QEMU had nothing to warn about the backend (it
# did while vscsid offered the CONFIG protocol feature).
report_qemu_log_clean() {
  if grep -aqiE "warning|error" "$1"; then
    report qemu-log-clean FAIL "$(grep -aiE 'warning|error' "$1" | head -3 | tr '\n' ';')"
  else
    report qemu-log-clean PASS "QEMU printed no warning"
  fi
}
