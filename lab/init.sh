#!/bin/sh
# popvmm lab host /init (busybox sh, from popvmm's lab initramfs): loads the
# KVM, 9p (virtio-mmio) and network modules, mounts the machine's / read-only with the
# shares writable over it, and runs the job in a chroot. Markers on ttyS0
# ("popvmm-lab: STEP SECONDS" and "popvmm-lab: fail REASON") are read by
# popvmm lab; the job's stdio is ttyS1 (stdin, stdout) and ttyS2 (stderr).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

up() { read -r s _ </proc/uptime; echo "popvmm-lab: $1 $s" >/dev/ttyS0; }
fail() { echo "popvmm-lab: fail $*" >/dev/ttyS0; poweroff -f; }

up kernel
# Module parameters from the kernel command line: lab.MODULE=P=V[,P=V...]
# (busybox insmod does not read them there itself, as modprobe would).
modargs() {
  for a in $(cat /proc/cmdline); do
    case "$a" in lab.$1=*) echo "${a#lab.$1=}" | tr ',' ' ' ;; esac
  done
}
for m in $(cat /lab/modules); do
  insmod "/lab/mod/$m.ko" $(modargs "$m") 2>/tmp/insmod.err || fail "module $m did not load: $(cat /tmp/insmod.err)"
done
[ -c /dev/kvm ] || fail "/dev/kvm did not appear: $(dmesg | grep -iE 'kvm|svm' | tail -1)"
up modules

r=/newroot
mkdir -p $r
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro root $r || fail "mount the host's / over 9p"
mount -t tmpfs -o mode=1777 tmpfs $r/tmp || fail "tmpfs on /tmp"
mount -t tmpfs -o mode=755 tmpfs $r/run || fail "tmpfs on /run"
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -o bind /dev $r/dev
mkdir -p $r/dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts && ln -sf pts/ptmx $r/dev/ptmx
mkdir -p $r/dev/shm && mount -t tmpfs tmpfs $r/dev/shm
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null
mkdir -p $r/run/lab
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ctl $r/run/lab || fail "mount the job directory"
# Shares: tag sN at the absolute path in /run/lab/shares, line N+1.
n=0
while read -r dir; do
  mkdir -p "$r$dir" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "s$n" "$r$dir" || fail "mount share $dir"
  n=$((n + 1))
done <$r/run/lab/shares
ip link set lo up 2>/dev/null
hostname popvmm-lab
up ready

for t in 1 2; do stty -F /dev/ttyS$t raw -echo 2>/dev/null; done
if [ -f $r/run/lab/interactive ]; then
  stty -F /dev/ttyS1 sane 2>/dev/null
  # A session of its own, with ttyS1 as its controlling terminal.
  setsid sh -c "exec chroot $r /bin/sh /run/lab/job.sh </dev/ttyS1 >/dev/ttyS1 2>&1"
else
  chroot $r /bin/sh /run/lab/job.sh </dev/null >/dev/ttyS1 2>/dev/ttyS2
fi
st=$?
# Wait until the UARTs have sent every byte the job wrote (tcsetattr with
# TCSADRAIN), or poweroff would cut off the tail of its output.
for t in 1 2; do stty -F /dev/ttyS$t raw -echo 2>/dev/null; done
echo $st >$r/run/lab/status
up done
sync
poweroff -f
