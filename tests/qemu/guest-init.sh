#!/bin/busybox sh
# /init of the test guest. Loads the virtio-scsi and ext4 modules, finds the disks vscsid
# serves, and runs the checks the kernel command line selects (vscsid.test=e2e|demo).
# Each check prints "VSCSID-CHECK <name> PASS|FAIL <detail>" on the console; the host
# script parses them. The e2e run reboots once (to prove a reset guest finds its disks).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /mnt/d
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^vscsid\.$1=//p"; }
# Guest uptime in centiseconds in $NOW, without a fork (busybox ash: read is a builtin).
now_cs() { read -r up _ < /proc/uptime; NOW=$(( ${up%.*} * 100 + 1${up#*.} - 100 )); }
# fio_passes <seconds> <fio job options...>: random writes with crc32c verification, in
# passes until <seconds> are up (at most 100 passes). Each pass writes every block of the
# job's regions once, in a random order, with data from its own seed, and reads each back
# 16 writes later (the rest at its end). No pass wraps around its region: fio 3.33 (Debian
# 12) reports false verify failures (err=84, "bad header rand_seed") when a time-based job
# writes a block again, and aborts with a double free on exit. A write lost or misplaced
# still fails here: the block then holds the previous pass's data, under another seed.
# Its options come first, so they hold for every job section of the options given.
# The last pass's output is in $FIO_OUT.out (FIO_OUT defaults to /tmp/fio), the number of
# passes in $FIO_OUT.passes; returns fio's exit status (1 when no pass ran), printing
# fio's verify lines on failure.
fio_passes() {
  secs=$1; shift
  out=${FIO_OUT:-/tmp/fio}
  now_cs; end=$((NOW + secs * 100)); passes=0; frc=0
  while [ $frc = 0 ] && [ $passes -lt 100 ] && [ $NOW -lt $end ]; do
    passes=$((passes + 1))
    fio --rw=randwrite --verify=crc32c --verify_backlog=16 --verify_fatal=1 \
      --serialize_overlap=1 --randseed=$passes --runtime=$(( (end - NOW) / 100 + 1 )) \
      "$@" > $out.out 2>&1
    frc=$?
    now_cs
  done
  echo $passes > $out.passes
  [ $passes -gt 0 ] || frc=1
  [ $frc = 0 ] || grep -iE 'verify|bad header|expected|received' $out.out | head -n 10
  return $frc
}
MODE=$(arg test)
NDISKS=$(arg disks); NDISKS=${NDISKS:-1}
FAILED=0
check() { # check <name> <PASS|FAIL> <detail...>
  name=$1; res=$2; shift 2
  echo "VSCSID-CHECK $name $res $*"
  [ "$res" = PASS ] || FAILED=1
}
ok() { if "$@" >/tmp/out 2>&1; then echo PASS; else echo FAIL; fi; }
finish() {
  if [ $FAILED = 0 ]; then echo "VSCSID-RESULT PASS"; else echo "VSCSID-RESULT FAIL"; fi
  sync
  poweroff -f
}

# Wait (bounded) for the SCSI disks, then map LUN number -> /dev/sdX.
i=0
while [ "$(ls -d /sys/block/sd* 2>/dev/null | wc -l)" -lt "$NDISKS" ] && [ $i -lt 60 ]; do
  sleep 0.5; i=$((i + 1))
done
lun_dev() { # lun_dev <lun> -> sdX of 0:0:0:<lun>
  for b in /sys/block/sd*; do
    [ -e "$b" ] || continue
    addr=$(basename "$(readlink "$b/device")")
    [ "${addr##*:}" = "$1" ] && basename "$b"
  done
}

if [ "$MODE" = demo ]; then
  echo "=== vscsid demo guest: SCSI devices ==="
  for d in /sys/bus/scsi/devices/*:*:*:*; do
    [ -e "$d/vendor" ] || continue
    echo "$(basename "$d")  $(cat "$d/vendor") $(cat "$d/model") $(cat "$d/rev")  $(ls "$d/block" 2>/dev/null)"
  done
  dev=$(lun_dev 0)
  if [ -z "$dev" ]; then check demo-disk FAIL "no disk at LUN 0"; finish; fi
  echo "=== /dev/$dev: $(blockdev --getsize64 /dev/$dev) bytes ==="
  sg_inq /dev/$dev
  sg_readcap -l /dev/$dev
  mkfs.ext4 -q -F /dev/$dev && mount /dev/$dev /mnt/d && echo "hello from the guest" > /mnt/d/hello &&
    df -h /mnt/d && cat /mnt/d/hello && umount /mnt/d
  check demo-filesystem "$( [ $? = 0 ] && echo PASS || echo FAIL )" "mkfs, mount, write, df on /dev/$dev"
  finish
fi

if [ "$MODE" = pr ]; then
  # tests/qemu/run-reservations-e2e.sh: two guests (vscsid.role=a and b), each with its own
  # vscsid, share LUN 0 (the cluster disk) and LUN 1 (a mailbox: each guest writes its step
  # to its own block and waits for the other's, so the two run in turn). Persistent
  # reservations through sg_persist, writes and reads through dd with O_DIRECT.
  ROLE=$(arg role)
  D=$(lun_dev 0); MB=$(lun_dev 1)
  if [ -z "$D" ] || [ -z "$MB" ]; then check pr-$ROLE-disks FAIL "LUN 0 '$D' LUN 1 '$MB'"; finish; fi
  if [ "$ROLE" = a ]; then MINE=0; PEER=1; KEY=0xa; OTHER=0xb; else MINE=1; PEER=0; KEY=0xb; OTHER=0xa; fi
  # Writes are synced (an error comes back from fsync), reads first drop the device's
  # page cache (blockdev --flushbufs), so both reach the disk.
  say() { printf '%-511s\n' "$1" | dd of=/dev/$MB bs=512 seek=$MINE count=1 conv=notrunc,fsync 2>/dev/null; }
  hear() { # hear <step>: waits (bounded, 180 s) for the peer's step
    i=0
    while [ $i -lt 900 ]; do
      blockdev --flushbufs /dev/$MB
      dd if=/dev/$MB bs=512 skip=$PEER count=1 2>/dev/null | grep -q "^$1 " && return 0
      sleep 0.2; i=$((i + 1))
    done
    check pr-$ROLE-heard-$1 FAIL "the other guest never got there"; finish
  }
  wr() { dd if=/dev/urandom of=/dev/$D bs=4096 count=1 seek=$1 conv=notrunc,fsync 2>/dev/null; }
  rd() { blockdev --flushbufs /dev/$D; dd if=/dev/$D of=/dev/null bs=4096 count=1 skip=$1 2>/dev/null; }
  pass_if() { if [ "$1" = 0 ]; then echo PASS; else echo FAIL; fi; }
  fail_if() { if [ "$1" = 0 ]; then echo FAIL; else echo PASS; fi; }
  if [ "$ROLE" = a ]; then
    sg_persist --out --register --param-sark=$KEY /dev/$D >/tmp/out 2>&1
    check pr-a-register "$(pass_if $?)" "$(tail -n 1 /tmp/out)"
    say A1; hear B1
    sg_persist --out --reserve --param-rk=$KEY --prout-type=3 /dev/$D >/tmp/out 2>&1
    check pr-a-reserve-exclusive-access "$(pass_if $?)" "$(tail -n 1 /tmp/out)"
    wr 0; check pr-a-holder-writes "$(pass_if $?)" "dd to /dev/$D"
    say A2; hear B2
    wr 1; check pr-a-preempted-write-fails "$(fail_if $?)" "dd to /dev/$D after B preempted"
    rd 0; check pr-a-preempted-reads "$(pass_if $?)" "write exclusive lets others read"
    sg_persist --in -k /dev/$D >/tmp/out 2>&1
    grep -q "$OTHER" /tmp/out && ! grep -q "$KEY\$" /tmp/out
    check pr-a-key-removed "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out)"
    say A3
  else
    hear A1
    sg_persist --out --register --param-sark=$KEY /dev/$D >/tmp/out 2>&1
    check pr-b-register "$(pass_if $?)" "$(tail -n 1 /tmp/out)"
    sg_persist --in -k /dev/$D >/tmp/out 2>&1
    grep -q 0xa /tmp/out && grep -q 0xb /tmp/out
    check pr-b-sees-both-keys "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out)"
    say B1; hear A2
    sg_persist --in -r /dev/$D >/tmp/out 2>&1
    grep -q "Key=0xa" /tmp/out && grep -qi "exclusive access" /tmp/out
    check pr-b-sees-reservation "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out)"
    wr 2; check pr-b-fenced-write-fails "$(fail_if $?)" "dd to /dev/$D under A's reservation"
    rd 0; check pr-b-fenced-read-fails "$(fail_if $?)" "exclusive access"
    sg_persist --out --preempt-abort --param-rk=$KEY --param-sark=$OTHER --prout-type=1 /dev/$D >/tmp/out 2>&1
    check pr-b-preempt-and-abort "$(pass_if $?)" "$(tail -n 1 /tmp/out)"
    wr 2; check pr-b-writes-after-preempt "$(pass_if $?)" "dd to /dev/$D"
    say B2; hear A3
    sg_persist --out --clear --param-rk=$KEY /dev/$D >/tmp/out 2>&1
    check pr-b-clear "$(pass_if $?)" "$(tail -n 1 /tmp/out)"
  fi
  finish
fi

if [ "$MODE" = passthrough ]; then
  # tests/qemu/run-passthrough-e2e.sh: vscsid runs here, in the guest, on scsi_debug devices
  # (this kernel has scsi_debug; the build machines' does not), driven by the project's own
  # frontend (passthrough_check), which also sends each command straight to the device
  # with SG_IO and compares the answers.
  load_scsi_debug() { # load_scsi_debug <scsi_debug parameters...>
    for m in $(cat /etc/extra-modules.order); do
      if [ "$m" = scsi_debug.ko ]; then insmod "/lib/modules/extra/$m" "$@"; else insmod "/lib/modules/extra/$m" 2>/dev/null; fi
    done
    i=0
    while [ -z "$(debug_dev scsi_generic)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  }
  debug_dev() { # debug_dev scsi_generic|block -> sgN or sdX of the scsi_debug device
    for d in /sys/bus/scsi/devices/*:*:*:*; do
      grep -q scsi_debug "$d/model" 2>/dev/null || continue
      ls "$d/$1" 2>/dev/null | head -n 1
    done
  }
  run_probe() { # run_probe <prefix> <probe args> -- <vscsid LUN args>
    prefix=$1; shift
    probe=""
    while [ "$1" != -- ]; do probe="$probe $1"; shift; done
    shift
    rm -f /tmp/pt.sock
    VSCSID_SG_ENGINE=${SG_ENGINE:-async} vscsid --socket /tmp/pt.sock --num-queues 1 "$@" > /tmp/vscsid-$prefix.log 2>&1 &
    vpid=$!
    i=0
    while [ ! -S /tmp/pt.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -S /tmp/pt.sock ]; then
      check ${prefix}pt-vscsid-started FAIL "$(tail -n 2 /tmp/vscsid-$prefix.log | tr '\n' ' ')"
      return
    fi
    check ${prefix}pt-vscsid-started PASS "vscsid $*"
    passthrough_check --socket /tmp/pt.sock --prefix "$prefix" $probe
    kill $vpid 2>/dev/null; wait $vpid
    # A device the probe deletes is reported gone: that warning is expected.
    n=$(grep -E ' (ERROR|WARN) ' /tmp/vscsid-$prefix.log | grep -cv 'passthrough device gone')
    check ${prefix}pt-vscsid-log "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n warnings or errors"
    [ "$n" = 0 ] || grep -E ' (ERROR|WARN) ' /tmp/vscsid-$prefix.log | grep -v 'passthrough device gone' | head -n 3
  }
  # delay=0: the device answers inside the submitting call (no timer); measuring can ask
  # for an answer after a delay instead, as real hardware interrupts (vscsid.sdebug_ndelay=ns).
  NDELAY=$(arg sdebug_ndelay)
  if [ -n "$NDELAY" ]; then load_scsi_debug dev_size_mb=64 ndelay=$NDELAY; else load_scsi_debug dev_size_mb=64 delay=0; fi
  SG=$(debug_dev scsi_generic); SD=$(debug_dev block)
  if [ -z "$SG" ] || [ -z "$SD" ]; then check pt-scsi-debug FAIL "no scsi_debug disk"; finish; fi
  check pt-scsi-debug PASS "disk /dev/$SD /dev/$SG"
  # The sg LUN twice: the helper threads (measured against), then the asynchronous sg
  # interface (the default), whose device is deleted and comes back by a host scan.
  SG_ENGINE=threads
  run_probe sgthreads- --device /dev/$SG --mode disk --bench 2 -- --sg /dev/$SG
  SG_ENGINE=async
  run_probe sg- --device /dev/$SG --mode disk --bench 2 --delete-after --rescan-after -- --sg /dev/$SG
  # Measuring only (vscsid.bench_rounds=N, not in CI): N more interleaved rounds of the
  # two engines.
  ROUNDS=$(arg bench_rounds)
  r=0
  while [ $r -lt "${ROUNDS:-0}" ]; do
    r=$((r + 1))
    SG=$(debug_dev scsi_generic)
    for SG_ENGINE in threads async; do
      run_probe r$r-$SG_ENGINE- --device /dev/$SG --mode disk --bench 2 -- --sg /dev/$SG
    done
  done
  SG=$(debug_dev scsi_generic); SD=$(debug_dev block)
  if [ -z "$SG" ] || [ -z "$SD" ]; then check pt-scsi-debug-back FAIL "no scsi_debug disk after the scan"; finish; fi
  check pt-scsi-debug-back PASS "disk /dev/$SD /dev/$SG after the scan"
  run_probe block- --device /dev/$SG --mode disk --bench 2 --delete-after -- --disk /dev/$SD,passthrough,cache=none
  rmmod scsi_debug
  load_scsi_debug ptype=1
  SG=$(debug_dev scsi_generic)
  if [ -z "$SG" ]; then check pt-scsi-debug-tape FAIL "no scsi_debug tape"; finish; fi
  check pt-scsi-debug-tape PASS "tape /dev/$SG"
  run_probe tape- --device /dev/$SG --mode tape -- --sg /dev/$SG
  finish
fi

if [ "$MODE" = iscsi-pr ]; then
  # tests/qemu/run-iscsi-reservations-e2e.sh: LUN 0 is an iSCSI LUN with two paths
  # (policy failover: path 0 carries the I/O while it is up), LUN 1 a small disk whose
  # first block the host writes to tell the guest what it did ("CUT": path 0 is cut and
  # vscsid saw it fail; "RESTORED": path 0 is back and registered; "WITNESSED": a second
  # initiator on the host has checked the reservation at the target). The guest registers
  # and reserves (write exclusive, registrants only) with sg_persist, then fio writes and
  # verifies while the host cuts path 0; during the cut its own writes, read back, must
  # hold and the reservation must stay; once the path is back, so is its registration.
  D=$(lun_dev 0); MB=$(lun_dev 1)
  if [ -z "$D" ] || [ -z "$MB" ]; then check ipr-disks FAIL "LUN 0 '$D' LUN 1 '$MB'"; finish; fi
  check ipr-disks PASS "/dev/$D $(cat /sys/block/$D/device/vendor), mailbox /dev/$MB"
  KEY=0x1f2e3d4c
  RUNTIME=$(arg runtime); RUNTIME=${RUNTIME:-40}
  pass_if() { if [ "$1" = 0 ]; then echo PASS; else echo FAIL; fi; }
  # pr <sg_persist args>: output in /tmp/out; again after a failure (a new path's UNIT
  # ATTENTION reaches sg_persist, which does not retry), at most 3 times.
  pr() {
    i=0
    while [ $i -lt 3 ]; do
      sg_persist "$@" /dev/$D >/tmp/out 2>&1 && return 0
      i=$((i + 1)); sleep 0.5
    done
    return 1
  }
  # nkeys: how many times READ KEYS lists the key (one registration per I_T nexus).
  nkeys() { pr --in -k && grep -c "^ *$KEY\$" /tmp/out; }
  # resv: READ RESERVATION shows the key and the type.
  resv() { pr --in -r && grep -q "Key=$KEY" /tmp/out && grep -qi "write exclusive, registrants only" /tmp/out; }
  # wrv <block>: writes 4 KiB of new data at the 4 KiB block and reads it back (direct I/O).
  wrv() {
    dd if=/dev/urandom of=/tmp/blk bs=4096 count=1 2>/dev/null
    dd if=/tmp/blk of=/dev/$D bs=4096 seek=$1 count=1 oflag=direct conv=notrunc 2>/dev/null &&
      dd if=/dev/$D of=/tmp/back bs=4096 skip=$1 count=1 iflag=direct 2>/dev/null &&
      cmp -s /tmp/blk /tmp/back
  }
  # wrv_blocks <first> <n>: wrv on n blocks from first; prints how many failed.
  wrv_blocks() {
    bad=0; b=$1
    while [ $b -lt $(($1 + $2)) ]; do wrv $b || bad=$((bad + 1)); b=$((b + 1)); done
    echo $bad
  }
  hear() { # hear <word>: waits (bounded, 120 s) for the host's word in the mailbox
    i=0
    while [ $i -lt 600 ]; do
      dd if=/dev/$MB bs=512 count=1 iflag=direct 2>/dev/null | grep -q "^$1 " && return 0
      sleep 0.2; i=$((i + 1))
    done
    check ipr-heard-$1 FAIL "the host never said $1"; finish
  }
  base=$(dmesg | wc -l)
  pr --out --register --param-sark=$KEY
  check ipr-register "$(pass_if $?)" "key $KEY: $(tail -n 1 /tmp/out)"
  n=$(nkeys)
  check ipr-key-on-both-paths "$( [ "$n" = 2 ] && echo PASS || echo FAIL )" \
    "READ KEYS lists the key $n times (expected 2: one per path): $(tr '\n' ' ' < /tmp/out | tr -s ' ')"
  pr --out --reserve --param-rk=$KEY --prout-type=5
  check ipr-reserve "$(pass_if $?)" "type 5, write exclusive registrants only"
  resv; check ipr-reservation-shown "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out | tr -s ' ')"
  # Blocks 0-8191 (32 MiB) are fio's, the checks write from block 10240 (40 MiB) on.
  fio_passes "$RUNTIME" --name=ipr --filename=/dev/$D --direct=1 --ioengine=libaio --bs=4k \
    --size=32M --iodepth=8 &
  fio_pid=$!
  echo "VSCSID-IPR-FIO-START"
  hear CUT
  bad=$(wrv_blocks 10240 16)
  check ipr-writes-path-down "$( [ "$bad" = 0 ] && echo PASS || echo FAIL )" \
    "16 blocks written and read back through path 1 while path 0 is cut, $bad failed"
  resv; check ipr-reservation-held-path-down "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out | tr -s ' ')"
  n=$(nkeys)
  check ipr-key-registered-path-down "$( [ "${n:-0}" -ge 1 ] && echo PASS || echo FAIL )" \
    "READ KEYS lists the key $n times"
  echo "VSCSID-IPR-CHECKED-DOWN"
  hear RESTORED
  wait $fio_pid; rc=$?
  io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio.out | head -n 1)
  err=$(grep -o 'err= *[0-9]*' /tmp/fio.out | head -n 1)
  check ipr-fio-crc32c-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
    "fio across the cut: exit $rc, $(cat /tmp/fio.passes) passes, last: $err, $io"
  [ $rc = 0 ] || tail -n 20 /tmp/fio.out
  # tgtd makes every login a new I_T nexus and keeps the registration of the one that
  # ended: path 0's old nexus, path 1's and path 0's new one.
  n=$(nkeys)
  check ipr-key-on-both-paths-again "$( [ "$n" = 3 ] && echo PASS || echo FAIL )" \
    "READ KEYS lists the key $n times (expected 3: path 0's old nexus, path 1, path 0's new one)"
  resv; check ipr-reservation-held-after-restore "$(pass_if $?)" "$(tr '\n' ' ' < /tmp/out | tr -s ' ')"
  bad=$(wrv_blocks 10496 16)
  check ipr-writes-after-restore "$( [ "$bad" = 0 ] && echo PASS || echo FAIL )" \
    "16 blocks written and read back through path 0 again, $bad failed"
  pat='I/O error|critical|FAILED Result|timing out command'
  n=$(dmesg | tail -n +$((base + 1)) | grep -ciE "$pat")
  check ipr-no-guest-errors "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n kernel I/O error or conflict lines"
  [ "$n" = 0 ] || dmesg | tail -n +$((base + 1)) | grep -iE "$pat" | tail -n 5
  echo "VSCSID-IPR-WITNESS"
  hear WITNESSED
  pr --out --clear --param-rk=$KEY
  check ipr-clear "$(pass_if $?)" "CLEAR with key $KEY: $(tail -n 1 /tmp/out)"
  n=$(nkeys)
  check ipr-no-keys-after-clear "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "READ KEYS lists the key $n times"
  echo "VSCSID-IPR-CLEARED"
  finish
fi

if [ "$MODE" = multipath ]; then
  # tests/qemu/run-multipath-e2e.sh breaks the LUN's paths while this fio runs: every
  # block written is read back and checked during the run (fio_passes).
  D0=$(lun_dev 0)
  if [ -z "$D0" ]; then check mp-disk-found FAIL "no disk at LUN 0"; finish; fi
  check mp-disk-found PASS "/dev/$D0 $(cat /sys/block/$D0/device/vendor)"
  RUNTIME=$(arg runtime); RUNTIME=${RUNTIME:-60}
  # With vscsid.alua=1, LUN 1 is the scripted ALUA target's two-portal LUN, whose port
  # states the host switches while the same fio runs on it.
  D1=""
  if [ "$(arg alua)" = 1 ]; then
    D1=$(lun_dev 1)
    if [ -z "$D1" ]; then check mp-alua-disk-found FAIL "no disk at LUN 1"; finish; fi
    check mp-alua-disk-found PASS "/dev/$D1 $(cat /sys/block/$D1/device/vendor)"
    (FIO_OUT=/tmp/fio-alua; fio_passes "$RUNTIME" --name=alua --filename=/dev/$D1 --direct=1 \
      --ioengine=libaio --bs=4k --size=32M --iodepth=8) &
    alua_fio=$!
  fi
  echo "VSCSID-MP-FIO-START"
  fio_passes "$RUNTIME" --name=mp --filename=/dev/$D0 --direct=1 --ioengine=libaio --bs=4k \
    --size=32M --iodepth=8
  rc=$?
  echo "VSCSID-MP-FIO-DONE"
  io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio.out | head -n 1)
  err=$(grep -o 'err= *[0-9]*' /tmp/fio.out | head -n 1)
  check mp-fio-crc32c-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
    "fio exit $rc, $(cat /tmp/fio.passes) passes, last: $err, $io"
  [ $rc = 0 ] || tail -n 20 /tmp/fio.out
  if [ -n "$D1" ]; then
    wait $alua_fio
    rc=$?
    io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio-alua.out | head -n 1)
    err=$(grep -o 'err= *[0-9]*' /tmp/fio-alua.out | head -n 1)
    check mp-alua-fio-crc32c-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
      "fio exit $rc, $(cat /tmp/fio-alua.passes) passes, last: $err, $io"
    [ $rc = 0 ] || tail -n 20 /tmp/fio-alua.out
  fi
  n=$(dmesg | grep -ciE 'I/O error|critical|FAILED Result|timing out command')
  check mp-no-guest-errors "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n kernel I/O error lines"
  [ "$n" = 0 ] || dmesg | grep -iE 'I/O error|critical|FAILED Result|timing out command' | tail -n 5
  # Then the host takes both paths away for longer than no_path_retry: reads must fail
  # (once the queueing time is over) and work again when the paths return.
  echo "VSCSID-MP-OUTAGE-READY"
  err=0; after=0; i=0
  while [ $i -lt 400 ] && [ $after -lt 10 ]; do
    if dd if=/dev/$D0 of=/dev/null bs=4096 count=1 skip=$((i % 1000)) iflag=direct 2>/dev/null; then
      [ $err -gt 0 ] && after=$((after + 1))
    else
      err=$((err + 1))
    fi
    i=$((i + 1))
    sleep 0.25
  done
  check mp-outage-past-no-path-retry "$( [ $err -gt 0 ] && [ $after -ge 10 ] && echo PASS || echo FAIL )" \
    "$err reads failed while no path was up past no_path_retry, $after good reads after"
  finish
fi

if [ "$MODE" = hotplug ]; then
  # tests/qemu/run-hotplug-e2e.sh adds, grows and removes LUNs through vscsid's control
  # socket while fio with crc32c verification runs on LUN 0. Each "VSCSID-HP-STEP <s>"
  # asks the host for step <s>; the guest then waits (bounded) for what its kernel shows.
  D0=$(lun_dev 0)
  if [ -z "$D0" ]; then check hp-disk-found FAIL "no disk at LUN 0"; finish; fi
  RUNTIME=$(arg runtime); RUNTIME=${RUNTIME:-60}
  fio_passes "$RUNTIME" --name=hp --filename=/dev/$D0 --direct=1 --ioengine=libaio \
    --bs=4k --size=64M --iodepth=4 &
  fio_pid=$!
  since_cs() { now_cs; echo $((NOW - $1)); }
  # wait_for <seconds> <shell test>: polls every 0.1 s; 0 once the test holds.
  wait_for() {
    n=0
    while [ $n -lt $(($1 * 10)) ]; do eval "$2" && return 0; sleep 0.1; n=$((n + 1)); done
    return 1
  }
  echo "VSCSID-HP-STEP add"
  now_cs; t0=$NOW
  if wait_for 30 '[ -n "$(lun_dev 1)" ]'; then
    D1=$(lun_dev 1)
    check hp-added-disk-appears PASS "/dev/$D1 after $(since_cs $t0) cs, no manual rescan"
  else
    check hp-added-disk-appears FAIL "no disk at LUN 1 within 30 s"; finish
  fi
  r=FAIL
  if mkfs.ext4 -q -F /dev/$D1 && mount /dev/$D1 /mnt/d && \
     dd if=/dev/urandom of=/mnt/d/data bs=1M count=8 2>/dev/null && sync; then r=PASS; fi
  sum=$(md5sum < /mnt/d/data | cut -d' ' -f1)
  check hp-added-disk-ext4 $r "mkfs, mount, 8 MiB written on /dev/$D1"
  before=$(cat /sys/block/$D1/size)
  kb_before=$(df -k /mnt/d | awk 'NR == 2 { print $2 }')
  echo "VSCSID-HP-STEP resize"
  now_cs; t0=$NOW
  if wait_for 30 '[ "$(cat /sys/block/$D1/size)" != "$before" ]'; then
    check hp-resize-seen PASS "/sys/block/$D1/size $before -> $(cat /sys/block/$D1/size) after $(since_cs $t0) cs"
  else
    check hp-resize-seen FAIL "size still $before after 30 s"
  fi
  resize2fs /dev/$D1 > /tmp/out 2>&1
  kb_after=$(df -k /mnt/d | awk 'NR == 2 { print $2 }')
  check hp-resize2fs-online "$( [ "$kb_after" -gt "$kb_before" ] && echo PASS || echo FAIL )" \
    "mounted ext4 grown online: $kb_before -> $kb_after KiB"
  got=$(md5sum < /mnt/d/data | cut -d' ' -f1)
  umount /mnt/d
  e2fsck -fn /dev/$D1 > /tmp/out 2>&1; rc=$?
  check hp-ext4-intact "$( [ $rc = 0 ] && [ "$got" = "$sum" ] && echo PASS || echo FAIL )" \
    "e2fsck exit $rc, data md5 $got (written $sum)"
  echo "VSCSID-HP-STEP remove"
  now_cs; t0=$NOW
  if wait_for 30 '[ ! -e /sys/block/$D1 ]'; then
    check hp-removed-disk-gone PASS "/dev/$D1 gone after $(since_cs $t0) cs"
  else
    check hp-removed-disk-gone FAIL "/dev/$D1 still there after 30 s"
  fi
  echo "VSCSID-HP-STEP add-iscsi"
  if wait_for 30 '[ -n "$(lun_dev 2)" ]'; then
    D2=$(lun_dev 2)
    vendor=$(cat /sys/block/$D2/device/vendor)
    fio --name=hpi --filename=/dev/$D2 --direct=1 --ioengine=libaio --rw=randwrite --bs=16k \
      --size=16M --iodepth=4 --verify=crc32c --verify_fatal=1 > /tmp/out 2>&1; rc=$?
    check hp-iscsi-added "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
      "/dev/$D2 vendor '$vendor', fio write+verify exit $rc"
  else
    check hp-iscsi-added FAIL "no disk at LUN 2 within 30 s"
  fi
  wait $fio_pid; rc=$?
  io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio.out | head -n 1)
  check hp-fio-lun0-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
    "fio on LUN 0 exit $rc after $(cat /tmp/fio.passes) passes, $io"
  [ $rc = 0 ] || tail -n 15 /tmp/fio.out
  pat='I/O error|critical|FAILED Result|timing out command|reset'
  n=$(dmesg | grep -ciE "$pat")
  check hp-no-guest-errors "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n kernel error/reset lines"
  [ "$n" = 0 ] || dmesg | grep -iE "$pat" | tail -n 5
  finish
fi

if [ "$MODE" = migrate ]; then
  # tests/qemu/run-migration-e2e.sh migrates this guest to another QEMU (with its own
  # vscsid on the same image) while fio writes and reads back every block with crc32c.
  D0=$(lun_dev 0)
  if [ -z "$D0" ]; then check mig-disk-found FAIL "no disk at LUN 0"; finish; fi
  check mig-disk-found PASS "/dev/$D0 $(cat /sys/block/$D0/device/vendor)"
  RUNTIME=$(arg runtime); RUNTIME=${RUNTIME:-40}
  # Known data past fio's range, out of the page cache: read (buffered) 1 MiB at a time
  # over the first seconds, while the migration runs, so it reaches the page cache by DMA
  # alone; compared from the page cache on the destination at the end. A page the device
  # wrote but did not log would hold what QEMU copied before. So that "before" differs
  # from the data: the data goes from /dev/urandom to the disk and back through 1 MiB
  # O_DIRECT buffers only (never 32 MiB of it in guest RAM, where freed pages holding it
  # could be handed to the page cache and hide a missed page), and free memory is filled
  # with another pattern (a tmpfs file, removed) before the migration starts.
  dd if=/dev/urandom of=/dev/$D0 bs=1M seek=128 count=64 oflag=direct conv=fsync 2>/dev/null
  ref=$(dd if=/dev/$D0 bs=1M skip=128 count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  dd if=/dev/zero bs=1M count=96 2>/dev/null | tr '\000' '\132' > /tmp/fill
  rm -f /tmp/fill
  sync; echo 3 > /proc/sys/vm/drop_caches
  # Held open to the end: the kernel drops a block device's page cache when its last
  # opener closes it, and the final read must come from the page cache, not the disk.
  exec 7< /dev/$D0
  # The same for a buffer of a guest program's own (examples/guest_dma_hold.rs): filled
  # by the CPU now, then written by the device alone over the migration (MiB 160-191).
  rm -f /tmp/dma-go /tmp/dma-verify
  guest_dma_hold /dev/$D0 160 32 250 /tmp/dma-go /tmp/dma-verify > /tmp/dma.out 2>&1 &
  dma_pid=$!
  i=0; while [ $i -lt 100 ] && ! grep -q waiting /tmp/dma.out; do sleep 0.1; i=$((i + 1)); done
  touch /tmp/dma-go
  echo "VSCSID-MIG-FIO-START"
  (i=0; while [ $i -lt 32 ]; do
    dd if=/dev/$D0 of=/dev/null bs=1M skip=$((128 + i)) count=1 2>/dev/null
    sleep 0.25; i=$((i + 1))
  done) &
  reader_pid=$!
  # Random writes, each block read back, in passes that never wrap (fio_passes).
  fio_passes "$RUNTIME" --name=mig --filename=/dev/$D0 --direct=1 --ioengine=libaio \
    --bs=4k --size=32M --iodepth=8 --numjobs=2 --offset_increment=32M --group_reporting
  rc=$?
  io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio.out | head -n 1)
  err=$(grep -o 'err= *[0-9]*' /tmp/fio.out | head -n 1)
  check mig-fio-crc32c-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
    "fio exit $rc after $(cat /tmp/fio.passes) passes, $err, last pass $io"
  wait $reader_pid
  got=$(dd if=/dev/$D0 bs=1M skip=128 count=32 2>/dev/null | md5sum | cut -d' ' -f1)
  check mig-page-cache-intact "$( [ "$got" = "$ref" ] && echo PASS || echo FAIL )" \
    "data read into the page cache during the migration: md5 $got, written $ref"
  exec 7<&-
  touch /tmp/dma-verify
  wait $dma_pid; drc=$?
  check mig-dma-buffer-intact "$( [ $drc = 0 ] && echo PASS || echo FAIL )" \
    "$(grep -v waiting /tmp/dma.out | tail -n 1)"
  [ $rc = 0 ] || tail -n 20 /tmp/fio.out
  n=$(dmesg | grep -ciE 'I/O error|critical|FAILED Result|timing out command|reset')
  check mig-no-guest-errors "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n kernel error/reset lines"
  [ "$n" = 0 ] || dmesg | grep -iE 'I/O error|critical|FAILED Result|timing out command|reset' | tail -n 5
  finish
fi

if [ "$MODE" = restart ]; then
  # tests/qemu/run-restart-e2e.sh restarts vscsid (SIGKILL or SIGTERM) while this fio
  # runs: four jobs (two 4 KiB with 8 in flight, two 64 KiB with 4 in flight), each on its
  # own 24 MiB region and spread over both vCPUs (both request queues), every block read
  # back and checked during the run (fio_passes). Beside it a probe reads one 4 KiB
  # block with O_DIRECT after another from a region fio does not touch, and prints every
  # gap of 250 ms or more between two completed reads ("VSCSID-GAP <uptime cs> <gap cs>",
  # on the console as it happens): the stalls the guest sees. It gives up after 10 failed
  # reads.
  D0=$(lun_dev 0)
  if [ -z "$D0" ]; then check rs-disk-found FAIL "no disk at LUN 0"; finish; fi
  check rs-disk-found PASS "/dev/$D0 $(cat /sys/block/$D0/device/vendor)"
  RUNTIME=$(arg runtime); RUNTIME=${RUNTIME:-45}
  base=$(dmesg | wc -l)
  rm -f /tmp/probe-stop
  probe() {
    n=0; err=0; now_cs; prev=$NOW
    while [ ! -e /tmp/probe-stop ] && [ $n -lt 200000 ] && [ $err -lt 10 ]; do
      if ! dd if=/dev/$D0 of=/dev/null bs=4096 count=1 skip=$((32768 + n % 8192)) iflag=direct 2>/dev/null; then
        err=$((err + 1)); echo "VSCSID-PROBE-ERR $NOW"
      fi
      now_cs
      [ $((NOW - prev)) -ge 25 ] && echo "VSCSID-GAP $NOW $((NOW - prev))"
      prev=$NOW; n=$((n + 1))
      echo $n > /tmp/probe-n
    done
    echo "VSCSID-PROBE-DONE $n $err $prev"
  }
  # A read that never completes hangs the probe for good (virtio-scsi lets the host time
  # commands out, the guest never does): every 5 s without progress, say so and how many
  # requests the disk has in flight.
  watch_probe() {
    last=-1; i=0
    while [ ! -e /tmp/probe-stop ] && [ $i -lt 2000 ]; do
      sleep 5; i=$((i + 1))
      read -r cur < /tmp/probe-n 2>/dev/null || cur=0
      if [ "$cur" = "$last" ]; then
        now_cs; echo "VSCSID-STUCK $NOW reads, writes in flight: $(cat /sys/block/$D0/inflight)"
      fi
      last=$cur
    done
  }
  (probe 2>&1 | tee /tmp/probe.out) &
  probe_pid=$!
  watch_probe &
  fio_passes "$RUNTIME" --filename=/dev/$D0 --direct=1 --ioengine=libaio --verify_state_save=0 \
    --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --name=w4k --bs=4k --iodepth=8 --numjobs=2 --size=24M --offset=0 --offset_increment=24M \
    --name=w64k --bs=64k --iodepth=4 --numjobs=2 --size=24M --offset=48M --offset_increment=24M &
  fio_pid=$!
  now_cs; echo "VSCSID-RS-FIO-START $NOW"
  wait $fio_pid
  rc=$?
  touch /tmp/probe-stop; wait
  echo "VSCSID-RS-FIO-DONE"
  err=$(grep -o 'err= *[0-9]*' /tmp/fio.out | tr -d ' ' | tr '\n' ',')
  io=$(grep -o 'write: IOPS=[^,]*' /tmp/fio.out | tr '\n' ',')
  check rs-fio-crc32c-verify "$( [ $rc = 0 ] && echo PASS || echo FAIL )" \
    "fio exit $rc, $(cat /tmp/fio.passes) passes of 4 jobs, last: $err $io"
  [ $rc = 0 ] || tail -n 30 /tmp/fio.out
  set -- $(grep '^VSCSID-PROBE-DONE' /tmp/probe.out)
  check rs-probe-reads "$( [ "${3:-1}" = 0 ] && [ "${2:-0}" -gt 0 ] && echo PASS || echo FAIL )" "${2:-0} O_DIRECT reads, ${3:-?} failed"
  pat='I/O error|critical|FAILED Result|timing out command|abort|reset|not a head|broken|Buffer I/O'
  n=$(dmesg | tail -n +$((base + 1)) | grep -ciE "$pat")
  check rs-no-guest-errors "$( [ "$n" = 0 ] && echo PASS || echo FAIL )" "$n kernel lines about I/O errors, aborts or resets since fio started"
  [ "$n" = 0 ] || dmesg | tail -n +$((base + 1)) | grep -iE "$pat" | head -n 10
  finish
fi

if [ "$MODE" = qemukill ]; then
  # tests/qemu/run-qemu-kill-e2e.sh kills QEMU while this fio runs (it never ends by
  # itself). With vscsid.final=1 the guest instead checks that the disk still works
  # (fio with crc32c verification) and powers off.
  D0=$(lun_dev 0)
  if [ -z "$D0" ]; then check qk-disk-found FAIL "no disk at LUN 0"; finish; fi
  if [ "$(arg final)" = 1 ]; then
    r=$(ok fio --name=verify --filename=/dev/$D0 --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
      --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0)
    check qk-final-fio-crc32c "$r" "$(grep -E 'err=' /tmp/out | head -1 | tr -s ' ')"
    finish
  fi
  fio --filename=/dev/$D0 --direct=1 --ioengine=libaio --time_based --runtime=600 --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --name=qk --rw=randrw --bs=4k --iodepth=16 --numjobs=2 \
    --size=32M --offset_increment=32M > /tmp/fio.out 2>&1 &
  sleep 1
  echo "VSCSID-QK-IO-START"
  wait
  finish
fi

if [ "$MODE" = fio ]; then
  # benches/vm-fio.sh: the same fio jobs on the guest's one data disk, whatever device it is.
  i=0
  while ! ls /sys/block/ | grep -qE '^(sd|vd)' && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
  dev=$(ls /sys/block/ | grep -E '^(sd|vd)' | head -1)
  RT=$(arg runtime); RT=${RT:-5}
  for job in "randread 4k 1" "randread 4k 32" "randwrite 4k 32" "read 128k 8"; do
    set -- $job
    fio --name=vm --filename=/dev/$dev --direct=1 --ioengine=libaio --rw=$1 --bs=$2 --iodepth=$3 \
      --runtime=$RT --time_based --size=256M --output-format=terse --terse-version=3 > /tmp/out 2>&1
    # terse v3: field 8 read IOPS, 49 write IOPS; 40/81 read/write mean latency (us).
    r=$(awk -F';' '{ if ($8 > 0) print $8, $40; else print $49, $81 }' /tmp/out)
    set -- $r
    echo "VSCSID-FIO {\"workload\": \"$(echo $job | awk '{print $1"-"$2"-qd"$3}')\", \"iops\": ${1:-0}, \"lat_mean_us\": ${2:-0}}"
  done
  check vm-fio "$( [ -n "$dev" ] && echo PASS || echo FAIL )" "fio on /dev/$dev"
  finish
fi

if [ "$MODE" = iscsi ]; then
  # LUN 0 is a LUN of an iSCSI target that vscsid passes through.
  D0=$(lun_dev 0)
  check iscsi-disk-found "$( [ -n "$D0" ] && echo PASS || echo FAIL )" "lun0=$D0"
  [ -n "$D0" ] || finish
  r=$(ok sg_inq /dev/$D0); grep -q "Vendor identification: IET" /tmp/out || r=FAIL
  check iscsi-inquiry-vendor "$r" "$(grep -E 'Vendor|Product' /tmp/out | tr -s ' ' | tr '\n' ';')"
  SIZE0=$(blockdev --getsize64 /dev/$D0)
  check iscsi-capacity "$( [ "$SIZE0" = "$(arg size0)" ] && echo PASS || echo FAIL )" "$SIZE0 bytes"
  r=$(ok fio --name=verify --filename=/dev/$D0 --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
    --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0)
  check iscsi-fio-crc32c "$r" "$(grep -E 'err=' /tmp/out | head -1 | tr -s ' ')"
  fs=FAIL
  if mkfs.ext4 -q -F /dev/$D0 && mount /dev/$D0 /mnt/d; then
    dd if=/dev/urandom of=/mnt/d/f bs=1M count=4 2>/dev/null
    (cd /mnt/d && sha256sum f) > /tmp/sums
    sync; umount /mnt/d
    if mount /dev/$D0 /mnt/d && (cd /mnt/d && sha256sum -c /tmp/sums >/dev/null); then fs=PASS; fi
    umount /mnt/d
  fi
  check iscsi-ext4 "$fs" "mkfs, write, remount, checksum"
  r=$(ok e2fsck -fn /dev/$D0)
  check iscsi-e2fsck-clean "$r" "$(tail -1 /tmp/out)"
  finish
fi

# ---- e2e ----
D0=$(lun_dev 0); D1=$(lun_dev 1); D2=$(lun_dev 2)
MARK_OFF=2048   # 512-byte sector where the reboot marker lives (1 MiB into LUN 0)
MARK="VSCSID-REBOOT-MARK"
if [ -n "$D0" ] && [ "$(dd if=/dev/$D0 bs=512 skip=$MARK_OFF count=1 2>/dev/null | head -c ${#MARK})" = "$MARK" ]; then
  # Second boot, after "reboot -f": the disks must be back, with the marker.
  check reboot-disks-found "$( [ -n "$D0" ] && [ -n "$D1" ] && [ -n "$D2" ] && echo PASS || echo FAIL )" "lun0=$D0 lun1=$D1 lun2=$D2"
  check reboot-marker PASS "marker written before the reboot read back from /dev/$D0"
  dd if=/dev/zero of=/dev/$D0 bs=512 seek=$MARK_OFF count=1 oflag=direct 2>/dev/null
  finish
fi

check disks-found "$( [ -n "$D0" ] && [ -n "$D1" ] && [ -n "$D2" ] && echo PASS || echo FAIL )" "lun0=$D0 lun1=$D1 lun2=$D2"
[ -n "$D0" ] && [ -n "$D1" ] && [ -n "$D2" ] || finish

SIZE0=$(blockdev --getsize64 /dev/$D0); SIZE1=$(blockdev --getsize64 /dev/$D1)
SIZE2=$(blockdev --getsize64 /dev/$D2)
check capacity "$( [ "$SIZE0" = "$(arg size0)" ] && [ "$SIZE1" = "$(arg size1)" ] && [ "$SIZE2" = "$(arg size2)" ] && echo PASS || echo FAIL )" \
  "lun0=$SIZE0 lun1=$SIZE1 lun2=$SIZE2 expected $(arg size0) $(arg size1) $(arg size2)"

r=$(ok sg_inq /dev/$D0); grep -q "Vendor identification: VSCSID" /tmp/out || r=FAIL
check sg_inq "$r" "$(grep -E 'Vendor|Product' /tmp/out | tr -s ' ' | tr '\n' ';')"
r=$(ok sg_vpd -p 0x83 /dev/$D0); grep -qi "NAA" /tmp/out || r=FAIL
check sg_vpd-0x83 "$r" "$(grep -i 'naa' /tmp/out | head -2 | tr -s ' ' | tr '\n' ';')"
r=$(ok sg_vpd -p 0xb0 /dev/$D0); grep -qi "Maximum unmap LBA count" /tmp/out || r=FAIL
check sg_vpd-0xb0 "$r" "$(grep -i 'unmap LBA count' /tmp/out | tr -s ' ')"
r=$(ok sg_vpd -p 0xb2 /dev/$D0); grep -qi "LBPU=1\|Unmap command supported (LBPU): 1" /tmp/out || r=FAIL
check sg_vpd-0xb2 "$r" "$(grep -i 'lbpu' /tmp/out | tr -s ' ')"
# cache=none reports a write cache: the caching page (08h, length 12h) has WCE (bit 2) set.
r=$(ok sg_modes -p 0x08 /dev/$D0); grep -A1 -i "caching" /tmp/out | grep -qE " 08 12 0[4-7c-f]" || r=FAIL
check sg_modes-caching "$r" "$(grep -A1 -i 'caching' /tmp/out | tail -1 | tr -s ' ')"
r=$(ok sg_readcap -l /dev/$D0); grep -q "lbpme=1" /tmp/out || r=FAIL
check sg_readcap "$r" "$(grep -E 'lbpme|Logical block length' /tmp/out | tr -s ' ' | tr '\n' ';')"
r=$(ok sg_opcodes /dev/$D0); grep -q "Read(16)" /tmp/out || r=FAIL
check sg_opcodes "$r" "$(grep -c . /tmp/out) lines"

# The read-only LUN: known content readable, writes refused.
SUM1=$(md5sum < /dev/$D1 | cut -d' ' -f1)
check readonly-content "$( [ "$SUM1" = "$(arg md5_1)" ] && echo PASS || echo FAIL )" "md5 $SUM1"
if dd if=/dev/zero of=/dev/$D1 bs=4096 count=1 oflag=direct 2>/tmp/out; then
  check readonly-refuses-writes FAIL "a write to the read-only LUN succeeded"
else
  check readonly-refuses-writes PASS "$(head -1 /tmp/out)"
fi
# The kernel refuses writes to a write-protected disk by itself; send a WRITE(10) straight
# to the device through its sg node to see the daemon's own answer: DATA PROTECT.
SG1=$(ls /sys/block/$D1/device/scsi_generic/ 2>/dev/null | head -1)
sg_raw -s 4096 -i /dev/zero /dev/$SG1 2a 00 00 00 00 00 00 00 01 00 >/tmp/out 2>&1
if grep -qi "data protect" /tmp/out; then
  check readonly-write-sense PASS "WRITE(10) answered DATA PROTECT"
else
  check readonly-write-sense FAIL "$(tr '\n' ';' < /tmp/out | head -c 300)"
fi

# fio with crc32c verification and direct I/O on LUN 0.
r=$(ok fio --name=verify --filename=/dev/$D0 --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
  --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0)
check fio-crc32c "$r" "$(grep -E 'err=|IOPS' /tmp/out | head -2 | tr -s ' ' | tr '\n' ';')"

# ext4: mkfs, write, remount, checksums, fsck.
fs=FAIL
if mkfs.ext4 -q -F /dev/$D0 && mount /dev/$D0 /mnt/d; then
  for n in 1 2 3; do dd if=/dev/urandom of=/mnt/d/f$n bs=1M count=4 2>/dev/null; done
  mkdir /mnt/d/dir && echo hello > /mnt/d/dir/hello
  (cd /mnt/d && sha256sum f1 f2 f3 dir/hello) > /tmp/sums
  sync; umount /mnt/d
  if mount /dev/$D0 /mnt/d && (cd /mnt/d && sha256sum -c /tmp/sums >/dev/null); then fs=PASS; fi
  umount /mnt/d
fi
check ext4-remount-checksums "$fs" "4 files verified after remount"
r=$(ok e2fsck -fn /dev/$D0)
check e2fsck-clean "$r" "$(tail -1 /tmp/out)"

# Discard the whole LUN: the blocks must read back as zeroes, and (host check) the
# backing file becomes sparse again.
r=$(ok blkdiscard /dev/$D0)
check blkdiscard "$r" "$(head -1 /tmp/out)"
Z=$(dd if=/dev/$D0 bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
ZREF=$(dd if=/dev/zero bs=1M count=8 2>/dev/null | md5sum | cut -d' ' -f1)
check discard-reads-zero "$( [ "$Z" = "$ZREF" ] && echo PASS || echo FAIL )" "first 8 MiB after discard"
echo "VSCSID-HOST discarded"

# LUN 2: writable with 4096-byte logical blocks. The kernel must see the block size,
# fio's checksums must hold, ext4 must survive a remount, and fstrim through the mounted
# file system must deallocate (host check: the backing file is sparse again).
LBS2=$(cat /sys/block/$D2/queue/logical_block_size); PBS2=$(cat /sys/block/$D2/queue/physical_block_size)
check lun2-block-size "$( [ "$LBS2" = 4096 ] && [ "$PBS2" = 4096 ] && echo PASS || echo FAIL )" \
  "/dev/$D2 logical $LBS2, physical $PBS2"
r=$(ok fio --name=verify4k --filename=/dev/$D2 --direct=1 --ioengine=libaio --rw=randwrite \
  --bsrange=4k-64k --size=32M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0)
check lun2-fio-crc32c "$r" "$(grep -E 'err=|IOPS' /tmp/out | head -2 | tr -s ' ' | tr '\n' ';')"
fs=FAIL
if mkfs.ext4 -q -F -b 4096 /dev/$D2 && mount /dev/$D2 /mnt/d; then
  for n in 1 2 3; do dd if=/dev/urandom of=/mnt/d/f$n bs=1M count=8 2>/dev/null; done
  (cd /mnt/d && sha256sum f1 f2 f3) > /tmp/sums
  sync; umount /mnt/d
  if mount /dev/$D2 /mnt/d && (cd /mnt/d && sha256sum -c /tmp/sums >/dev/null); then fs=PASS; fi
fi
check lun2-ext4-remount-checksums "$fs" "3 files of 8 MiB verified after remount on 4096-byte blocks"
trimmed=0
if [ $fs = PASS ]; then
  rm -f /mnt/d/f1 /mnt/d/f2 /mnt/d/f3; sync
  fstrim -v /mnt/d > /tmp/out 2>&1
  trimmed=$(grep -oE '[0-9]+ bytes' /tmp/out | head -1 | cut -d' ' -f1)
  umount /mnt/d
fi
check lun2-fstrim "$( [ "${trimmed:-0}" -ge $((24 << 20)) ] && echo PASS || echo FAIL )" \
  "fstrim after removing 24 MiB: $(head -1 /tmp/out)"
r=$(ok e2fsck -fn /dev/$D2)
check lun2-e2fsck-clean "$r" "$(tail -1 /tmp/out)"
# What the file system still uses (its metadata), for the host's sparseness check.
USED2=$(sed -n 's|.* \([0-9]*\)/[0-9]* blocks.*|\1|p' /tmp/out | tail -1)
echo "VSCSID-HOST lun2-trimmed fs-bytes=$(( ${USED2:-0} * 4096 ))"

# Reboot: write the marker, reset the machine; the second boot checks the disks.
printf '%s' "$MARK" | dd of=/dev/$D0 bs=512 seek=$MARK_OFF count=1 conv=sync oflag=direct 2>/dev/null
sync
if [ $FAILED = 0 ]; then echo "VSCSID-FIRSTBOOT PASS"; else echo "VSCSID-FIRSTBOOT FAIL"; fi
reboot -f
